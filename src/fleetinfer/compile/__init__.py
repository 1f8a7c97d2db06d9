"""Compile a model once per hardware target, gate it on accuracy, and profile how to serve it.

```
targets.py      cpu, cpu-avx512, cpu-arm64, cuda, tensorrt, openvino: precisions, runnable here?
passes.py       offline graph optimization, INT8 (static QDQ / dynamic), FP16 conversion
calibration.py  CalibrationSource (an iterable of input dicts), npz / random / zero sources
accuracy.py     Evaluator protocol, output comparison, the accuracy gate
compiler.py     compile_model: build, evaluate, measure, manifest, record, publish (or not)
manifest.py     <version>/manifest.json
profile.py      profile_model / write_profile: the batch x threads x precision x instances sweep
plugins.py      task plugins (entry points `fleetinfer.compile.tasks`): a workload's calibration and metric
```
"""

from fleetinfer.compile.accuracy import Evaluator, InputsEvaluator
from fleetinfer.compile.calibration import ArraySource, CalibrationSource, NpzSource
from fleetinfer.compile.compiler import BenchSettings, CompileRequest, CompileResult, compile_model
from fleetinfer.compile.manifest import Manifest, read_manifest
from fleetinfer.compile.passes import QuantizationOptions
from fleetinfer.compile.profile import (
    Constraints,
    ProfileReport,
    ProfileSpace,
    profile_model,
    write_profile,
)
from fleetinfer.compile.targets import PRECISIONS, TARGETS
from fleetinfer.errors import (
    AccuracyGateError,
    ArtifactLoadError,
    CalibrationError,
    NoFeasibleProfileError,
    UnsupportedBuildError,
)

__all__ = [
    "PRECISIONS",
    "TARGETS",
    "AccuracyGateError",
    "ArraySource",
    "ArtifactLoadError",
    "BenchSettings",
    "CalibrationError",
    "CalibrationSource",
    "CompileRequest",
    "CompileResult",
    "Constraints",
    "Evaluator",
    "InputsEvaluator",
    "Manifest",
    "NoFeasibleProfileError",
    "NpzSource",
    "ProfileReport",
    "ProfileSpace",
    "QuantizationOptions",
    "UnsupportedBuildError",
    "compile_model",
    "profile_model",
    "read_manifest",
    "write_profile",
]
