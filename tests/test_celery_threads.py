"""Pool processes do numerical work on one BLAS thread (larry_web.celery.one_blas_thread_per_pool_process)."""

import numpy as np  # noqa: F401  (loads the BLAS library whose threads are limited)
from threadpoolctl import threadpool_info, threadpool_limits

from larry_web.celery import one_blas_thread_per_pool_process


def test_a_pool_process_starts_with_one_blas_thread():
    before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
    assert before, "numpy should have loaded a BLAS library"
    try:
        one_blas_thread_per_pool_process()
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    finally:
        for pool in threadpool_info():
            threadpool_limits(before[pool["filepath"]], user_api=pool["user_api"])
