"""Where ``Scheduler`` used to live: it is now ``manycore._process`` (one module per responsibility)."""

from ._process._supervisor import Scheduler as Scheduler
from ._process._workers import _dying as _dying
from ._process._workers import _hurry_exit as _hurry_exit
