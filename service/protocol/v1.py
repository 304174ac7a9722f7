"""KServe V1 / TF Serving style prediction: ``{"instances": [...]}`` -> ``{"predictions": [...]}``.

Each instance is one sample (no batch dimension): its value, nested or flat row-major, for a
single-input model, or an object ``{input name: value}`` (required with several inputs).
Each prediction is one sample too: the output's value for a single-output model, else an
object ``{output name: value}``.
"""

import numpy as np
import numpy.typing as npt
import orjson

from service.backends.base import Arrays
from service.config import ModelConfig, TensorSpec
from service.datatypes import to_numpy
from service.errors import InvalidInput, PayloadTooLarge
from service.protocol.arrays import array_from_json, json_values
from service.protocol.jsonbody import load_object


def decode_v1_instances(body: bytes, config: ModelConfig) -> Arrays:
    """The instances as batch-first arrays, one per input of ``config``.

    Raises ``InvalidInput`` for a malformed body, ``PayloadTooLarge`` for more instances
    than ``config.max_batch_size``.
    """
    instances = load_object(body).get("instances")
    if type(instances) is not list or not instances:
        raise InvalidInput("'instances' must be a non-empty JSON array")
    if len(instances) > config.max_batch_size:
        raise PayloadTooLarge(
            f"batch of {len(instances)} is over max_batch_size {config.max_batch_size}"
        )
    if len(config.inputs) == 1 and type(instances[0]) is not dict:
        spec = config.inputs[0]
        return {spec.name: _samples(instances, spec)}
    columns = _columns(instances, config)
    return {spec.name: _samples(columns[spec.name], spec) for spec in config.inputs}


def encode_v1_predictions(outputs: Arrays, config: ModelConfig) -> bytes:
    """``{"predictions": [...]}``, one entry per sample, outputs cast to their datatypes."""
    arrays = {
        spec.name: json_values(np.asarray(outputs[spec.name], dtype=to_numpy(spec.datatype)))
        for spec in config.outputs
    }
    if len(arrays) == 1:
        predictions: object = next(iter(arrays.values()))
    else:
        batch = len(next(iter(arrays.values())))
        predictions = [{name: array[i] for name, array in arrays.items()} for i in range(batch)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _columns(instances: list[object], config: ModelConfig) -> dict[str, list[object]]:
    columns: dict[str, list[object]] = {spec.name: [] for spec in config.inputs}
    for index, instance in enumerate(instances):
        if type(instance) is not dict:
            raise InvalidInput(
                f"instances[{index}] must be an object {{input name: value}}, "
                f"the model's inputs being {', '.join(map(repr, columns))}"
            )
        if instance.keys() != columns.keys():
            raise InvalidInput(
                f"instances[{index}] has keys {sorted(instance)} but the model's inputs are "
                f"{sorted(columns)}"
            )
        for name, column in columns.items():
            column.append(instance[name])
    return columns


def _samples(values: list[object], spec: TensorSpec) -> npt.NDArray[np.generic]:
    where = f"input {spec.name!r}"
    array = array_from_json(values, spec.datatype, where)
    if array.size != len(values) * spec.sample_size:
        raise InvalidInput(
            f"{where}: each instance must have {spec.sample_size} values "
            f"(shape {list(spec.shape)}), got {array.size // len(values)}"
        )
    return array.reshape(len(values), *spec.shape)
