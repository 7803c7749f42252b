"""Seeded sampling into the SME queue, and the ground-truth rule."""

import pytest
from django.contrib.auth import get_user_model

from annotations.models import Review, SampleDraw, Slot
from annotations.queue import in_sme_queue
from annotations.selectors import ground_truth
from annotations.services import sample_for_review
from tests.conftest import make_items


def unqueue(project):
    """Forget the queue and the draws: a fresh start for the next draw."""
    Slot.objects.filter(project=project).delete()
    SampleDraw.objects.filter(project=project).delete()


def queued(project):
    return set(project.items.filter(in_sme_queue()).values_list("external_id", flat=True))


def test_the_same_seed_gives_the_same_sample(project):
    make_items(project, [f"answer {i}" for i in range(100)])
    assert sample_for_review(project=project, n=10, seed=7) == 10
    first = queued(project)
    unqueue(project)
    sample_for_review(project=project, n=10, seed=7)
    assert queued(project) == first
    unqueue(project)
    sample_for_review(project=project, n=10, seed=8)
    assert queued(project) != first


def test_a_fraction_counts_items_already_queued(project):
    make_items(project, [f"answer {i}" for i in range(50)])
    assert sample_for_review(project=project, fraction=0.2, seed=0) == 10
    assert sample_for_review(project=project, fraction=0.3, seed=0) == 5
    assert len(queued(project)) == 15


@pytest.mark.parametrize("kwargs", [{}, {"n": 1, "fraction": 0.1}, {"fraction": 0}, {"fraction": 1.5}, {"n": -1}])
def test_bad_sizes_are_refused(project, kwargs):
    with pytest.raises(ValueError):
        sample_for_review(project=project, **kwargs)


def test_ground_truth_is_the_majority_and_a_tie_is_none(project):
    a, b, c = make_items(project, ["a", "b", "c"])
    users = [get_user_model().objects.create_user(f"u{i}") for i in range(3)]
    for user, decision in zip(users, ["accept", "reject", "accept"], strict=True):
        Review.objects.create(item=a, reviewer=user, decision=decision)
    Review.objects.create(item=b, reviewer=users[0], decision="accept")
    Review.objects.create(item=b, reviewer=users[1], decision="reject")
    Review.objects.create(item=c, reviewer=None, decision="reject", origin="import")
    assert ground_truth(project=project) == {a.pk: "accept", c.pk: "reject"}
