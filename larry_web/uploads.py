"""Where an upload too big to keep in memory goes while it arrives: beside the media files it becomes."""

import os
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import uploadedfile, uploadhandler

FOLDER = "uploading"


class TemporaryUploadedFile(uploadedfile.TemporaryUploadedFile):
    """Django's temporary upload, in ``folder`` rather than ``FILE_UPLOAD_TEMP_DIR``."""

    def __init__(self, name, content_type, size, charset, content_type_extra=None, *, folder: Path):
        _, ext = os.path.splitext(name)
        file = tempfile.NamedTemporaryFile(suffix=".upload" + ext, dir=folder)
        uploadedfile.UploadedFile.__init__(self, file, name, content_type, size, charset, content_type_extra)


class TemporaryFileUploadHandler(uploadhandler.TemporaryFileUploadHandler):
    """Streams an upload over ``FILE_UPLOAD_MAX_MEMORY_SIZE`` to a temporary file in ``MEDIA_ROOT/uploading/``
    (made when missing), so that storing it in ``MEDIA_ROOT`` (``FileSystemStorage._save``, through
    ``file_move_safe``) is a rename on one file system rather than a copy. Deleted when the request ends
    unless it was moved."""

    def new_file(self, *args, **kwargs) -> None:
        uploadhandler.FileUploadHandler.new_file(self, *args, **kwargs)
        folder = Path(settings.MEDIA_ROOT) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        self.file = TemporaryUploadedFile(
            self.file_name, self.content_type, 0, self.charset, self.content_type_extra, folder=folder
        )
