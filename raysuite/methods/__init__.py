"""Registry of methods: one module per seed paper."""

from raysuite.methods.base import Method
from raysuite.methods.iou_simsiam_seg import METHOD as IOU_SIMSIAM_SEG
from raysuite.methods.simclr_detection import METHOD as SIMCLR_DETECTION

METHODS: dict[str, Method] = {
    "iou_simsiam_seg": IOU_SIMSIAM_SEG,
    "simclr_detection": SIMCLR_DETECTION,
}
