"""Running many videos: ``local_stream`` (threads, no Ray). Only this
package imports ``ray``, and only where a Ray pipeline is built."""

from .local import local_stream
from .rows import ROW_COLUMNS, row_patches

__all__ = ["local_stream", "row_patches", "ROW_COLUMNS"]
