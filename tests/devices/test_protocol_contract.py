"""The JSON Schemas require what the coordinator requires, and the codec's rules and the schemas agree.

A device written from docs/protocol.md validates its messages against these schemas; if a schema
accepted a reply the coordinator rejects (issue #14: results without `run`/`round` were valid but
every one was refused as `unknown-run`), the document would be wrong in the one place a firmware
engineer can check mechanically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from broker.accounts import enroll_device
from broker.secure import SecureBrokerConfig
from devices.exceptions import DeviceIdError
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.wire import protocol as p
from devices.wire.frames import _CONFIG_RULES
from devices.wire.topics import check_name
from federation.replies import RejectedReply, check_metrics


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(p.load_schema(name))


def _result(**over: object) -> dict:
    task = {"v": 1, "type": p.MessageType.TRAIN, "id": "t-1", "run": "run-a", "round": 3}
    hdr = p.decode_result(p.encode_result(task, device="dev-1", metrics={"num-examples": 5, "train-loss": 0.1}))
    return {**hdr.header, **over}


def test_a_result_without_run_and_round_is_invalid_and_the_error_names_them() -> None:
    good = _result()
    _validator("result").validate(good)
    bad = {k: v for k, v in good.items() if k not in ("run", "round")}
    messages = sorted(e.message for e in _validator("result").iter_errors(bad))
    assert messages == ["'round' is a required property", "'run' is a required property"]


def test_run_and_round_are_null_when_the_task_had_none() -> None:
    hdr = p.decode_result(p.encode_result({"v": 1, "type": p.MessageType.EVALUATE, "id": "t-2"}, device="d",
                                          metrics={"num-examples": 2, "loss": 0.3})).header
    assert hdr["run"] is None and hdr["round"] is None
    _validator("result").validate(hdr)


def test_num_examples_travels_as_a_json_integer() -> None:
    raw = p.encode_result({"v": 1, "type": p.MessageType.TRAIN, "id": "t"}, device="d",
                          metrics={"num-examples": 50, "train-loss": 0.25})
    text = raw[4:4 + int.from_bytes(raw[:4], "little")].decode()
    assert '"num-examples":50,' in text and '"train-loss":0.25' in text
    assert isinstance(json.loads(text)["metrics"]["num-examples"], int)


@pytest.mark.parametrize("task", [p.MessageType.TRAIN, p.MessageType.EVALUATE, p.MessageType.ADAPT])
def test_required_metrics_are_the_same_in_schema_keys_and_grid(task: str) -> None:
    required = p.REQUIRED_METRICS[task]
    hdr = _result(task=task, metrics={k: 1 for k in required})
    _validator("result").validate(hdr)
    for k in required:
        less = {**hdr, "metrics": {m: 1 for m in required if m != k}}
        errors = [e.message for e in _validator("result").iter_errors(less)]
        assert errors == [f"{k!r} is a required property"], (task, k)
    if task != p.MessageType.ADAPT:  # the Grid sends train and evaluate tasks only
        phase = "train" if task == p.MessageType.TRAIN else "evaluate"
        check_metrics({k: 1 for k in required}, phase=phase)
        for k in required:
            with pytest.raises(RejectedReply, match=k if k != "num-examples" else "num-examples"):
                check_metrics({m: 1 for m in required if m != k}, phase=phase)


def test_an_error_result_needs_no_metrics() -> None:
    hdr = p.decode_result(p.encode_result({"v": 1, "type": p.MessageType.TRAIN, "id": "t", "run": "r", "round": 1},
                                          device="d", error=(p.ErrorCode.BAD_SHAPE, "no"))).header
    _validator("result").validate(hdr)


@pytest.mark.parametrize("task", [p.MessageType.TRAIN, p.MessageType.EVALUATE, p.MessageType.ADAPT,
                                  p.MessageType.DEPLOY])
def test_task_schemas_list_exactly_the_codec_config_rules(task: str) -> None:
    config = p.load_schema(task)["properties"]["config"]
    rules = _CONFIG_RULES[task]
    assert set(config["properties"]) == set(rules), task
    assert set(config.get("required", [])) == {k for k, (_, required) in rules.items() if required}, task


def test_every_metric_a_device_sends_is_in_the_vocabulary() -> None:
    """The simulated device's replies use only `MetricKey` names (one vocabulary, issue #14 item 10)."""
    learner = OnlineLearner(MLPHead.init([1, 4, 1], kind="regression", seed=0), None)
    x = np.linspace(-1, 1, 12, dtype=np.float32)[:, None]
    y = np.sin(x)
    names = set(learner.train(x, y, 5)) | set(learner.adapt(x[:3], y[:3], 2)) | set(learner.evaluate(x, y))
    assert names <= set(p.METRIC_KEYS), names - set(p.METRIC_KEYS)


def test_one_device_id_rule_for_topics_accounts_and_the_document(tmp_path: Path) -> None:
    """Issue #14 item 4: the document allowed ':' but enrolment refused it; now one rule says no everywhere."""
    SecureBrokerConfig(tmp_path).initialize()
    rule = "use 1-64 characters from A-Z a-z 0-9 . _ - (no '/', '+', '#', ':', spaces)"
    with pytest.raises(DeviceIdError, match=re.escape(rule)):
        check_name("fd:colon")
    with pytest.raises(DeviceIdError, match=re.escape(rule)):
        enroll_device(tmp_path, "fd:colon")
    doc = (p.SCHEMA_DIR.parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert "**1–64 characters from `A-Z a-z 0-9 . _ -`, starting with a letter\n  or digit**" in doc
    assert enroll_device(tmp_path, "fd.dot_under-dash").name == "fd.dot_under-dash"
