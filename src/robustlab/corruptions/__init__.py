"""Common corruptions x severities, tensor-native, batched and seeded.

The 15 corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (ICLR 2019), and the 4 extra ones released with
CIFAR-10-C, registered under the names of the released files, 5 severities each.

>>> from robustlab import corruptions
>>> xc = corruptions.corrupt(x, "fog", 4, generator=torch.Generator().manual_seed(0))
>>> corruptions.available(), corruptions.COMMON, corruptions.get("fog").family
"""

from robustlab.corruptions import blur, digital, noise, weather  # noqa: F401  (registers them)
from robustlab.corruptions.base import (
    COMMON,
    EXTRA,
    FAMILIES,
    SEVERITIES,
    Corruption,
    available,
    check_severity,
    corrupt,
    corruptions,
    get,
    register_corruption,
)

__all__ = [
    "COMMON",
    "EXTRA",
    "FAMILIES",
    "SEVERITIES",
    "Corruption",
    "available",
    "check_severity",
    "corrupt",
    "corruptions",
    "get",
    "register_corruption",
]
