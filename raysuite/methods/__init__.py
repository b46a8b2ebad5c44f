"""Registry of methods: one module per seed paper."""

from raysuite.methods.base import Method
from raysuite.methods.genesis_cls import METHOD as GENESIS_CLS
from raysuite.methods.iou_simsiam_seg import METHOD as IOU_SIMSIAM_SEG
from raysuite.methods.one_case_cascade import METHOD as ONE_CASE_CASCADE
from raysuite.methods.simclr_detection import METHOD as SIMCLR_DETECTION
from raysuite.methods.weak_localization import METHOD as WEAK_LOCALIZATION

METHODS: dict[str, Method] = {
    "iou_simsiam_seg": IOU_SIMSIAM_SEG,
    "simclr_detection": SIMCLR_DETECTION,
    "one_case_cascade": ONE_CASE_CASCADE,
    "weak_localization": WEAK_LOCALIZATION,
    "genesis_cls": GENESIS_CLS,
}
