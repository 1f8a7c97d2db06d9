"""Placement: node attributes, requirements, capability class queues, devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.errors import ConfigError, InputError
from fleetinfer.node.attributes import (
    accelerator_attributes,
    check_labels,
    cpu_flags,
    node_attributes,
    normalized_arch,
    parse_requirements,
    satisfies,
)
from fleetinfer.node.model_server import ServerOptions
from fleetinfer.node.placement import (
    DEVICE_COUNTER_ENV,
    DEVICE_SOCKETS_ENV,
    device_environment,
    device_plans,
    pick_device_socket,
    start_device_servers,
)
from fleetinfer.queue import open_broker
from fleetinfer.queue.classes import (
    class_name,
    class_queue_url,
    class_requirements,
    consumed_at,
    list_classes,
)
from fleetinfer.queue.placed import PlacedBroker
from fleetinfer.task import App, Envelope, send_tasks

X86 = {"arch": "amd64", "accelerator": "none", "accelerator_count": "0"}
ARM = {**X86, "arch": "arm64"}


# -- attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "arch"), [("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64")]
)
def test_machine_names_are_normalized_to_amd64_and_arm64(machine: str, arch: str) -> None:
    assert normalized_arch(machine) == arch


def test_cpu_flags_are_read_from_the_first_processor_of_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == ["avx512_vnni", "fpu", "sse2"]


def test_arm_features_line_counts_as_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert cpu_flags(info) == ["asimd", "fp", "sve"]


def test_cuda_devices_are_counted_from_cuda_visible_devices(tmp_path: Path) -> None:
    found = accelerator_attributes({"CUDA_VISIBLE_DEVICES": "0,1,3"}, dev=tmp_path)
    assert found == {"accelerator": "cuda", "accelerator_count": "3"}


def test_neuron_devices_are_counted_from_dev_neuron(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"neuron{i}").touch()
    found = accelerator_attributes({"CUDA_VISIBLE_DEVICES": ""}, dev=tmp_path)
    assert found == {"accelerator": "neuron", "accelerator_count": "2"}


def test_labels_override_detected_attributes() -> None:
    attributes = node_attributes({"arch": "arm64", "label.pool": "gold"})
    assert attributes["arch"] == "arm64"
    assert attributes["label.pool"] == "gold"


def test_a_label_with_an_unknown_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown capability key 'team'"):
        check_labels({"team": "maps"})


def test_requirements_are_satisfied_only_by_equal_values() -> None:
    assert satisfies({"arch": "arm64"}, ARM)
    assert not satisfies({"arch": "arm64"}, X86)
    assert not satisfies({"cpu.avx512_vnni": "true"}, X86)
    assert satisfies({}, X86)


def test_requirements_parse_from_key_value_items() -> None:
    parsed = parse_requirements(["arch=arm64", "cpu.avx512_vnni=true"])
    assert parsed == {"arch": "arm64", "cpu.avx512_vnni": "true"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["arch"], "malformed: expected KEY=VALUE"),
        (["=arm64"], "malformed"),
        (["colour=blue"], "unknown capability key 'colour'"),
        (["arch=ARM 64"], "must be 1 to 40 of a-z 0-9 _"),
        (["cpu.avx2=yes"], "must be 'true'"),
        (["arch=arm64", "arch=amd64"], "twice"),
    ],
)
def test_bad_requirements_are_input_errors(items: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_requirements(items)


def test_a_task_declaring_an_unknown_capability_is_refused() -> None:
    app = App("placement")
    with pytest.raises(ConfigError, match="task 'bad' requires: unknown capability key 'gpu'"):
        app.task(name="bad", requires={"gpu": "yes"})(lambda ctx, payload: None)


# -- class queues ----------------------------------------------------------------------------


def test_class_names_are_deterministic_and_reversible() -> None:
    requires = {"cpu.avx512_vnni": "true", "arch": "arm64", "label.pool": "gold_1"}
    name = class_name(requires)
    assert name == "cap-arch-arm64-cpu_avx512_vnni-true-label_pool-gold_1"
    assert name == class_name(dict(reversed(list(requires.items()))))
    assert class_requirements(name) == requires


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///q.db?queue=jobs", "sqlite:///q.db?queue=jobs.cap-arch-arm64"),
        ("sqlite:///q.db", "sqlite:///q.db?queue=default.cap-arch-arm64"),
        (
            "redis://127.0.0.1:6379/0?queue=jobs&max_receives=3",
            "redis://127.0.0.1:6379/0?queue=jobs.cap-arch-arm64&max_receives=3",
        ),
        ("sqs://jobs?region=us-east-1", "sqs://jobs-cap-arch-arm64?region=us-east-1"),
    ],
)
def test_a_class_queue_is_named_after_its_base_queue_on_every_backend(
    url: str, expected: str
) -> None:
    assert class_queue_url(url, "cap-arch-arm64") == expected


def test_an_sqs_class_queue_name_over_the_limit_is_refused() -> None:
    with pytest.raises(InputError, match="longer than 76 characters"):
        class_queue_url("sqs://" + "q" * 60, class_name({"label.pool": "gold_and_silver"}))


def _send_arm_and_plain(url: str) -> None:
    with open_broker(url) as broker:
        send_tasks(broker, "square", [{"x": 1}])
        send_tasks(broker, "square", [{"x": 2}], requires={"arch": "arm64"})


def _received_xs(broker: PlacedBroker) -> list[int]:
    xs = []
    for message in broker.receive(max_messages=10, wait_s=0.2):
        xs.append(Envelope.decode(message.body).payload["x"])
        broker.ack(message.receipt)
    return sorted(xs)


def test_an_x86_node_does_not_receive_a_task_that_requires_arm64(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db?queue=jobs"
    _send_arm_and_plain(url)
    with PlacedBroker(open_broker(url), X86) as broker:
        assert _received_xs(broker) == [1]
        assert _received_xs(broker) == []
        assert broker.classes == []
    with open_broker(class_queue_url(url, "cap-arch-arm64")) as arm_queue:
        assert arm_queue.stats().visible == 1


def test_an_arm64_node_receives_its_class_and_the_base_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db?queue=jobs"
    _send_arm_and_plain(url)
    with PlacedBroker(open_broker(url), ARM) as broker:
        assert _received_xs(broker) + _received_xs(broker) == [1, 2]
        assert broker.classes == ["cap-arch-arm64"]
        assert broker.stats().pending == 0
        seen = consumed_at(broker.base, ["cap-arch-arm64"])
        assert seen["cap-arch-arm64"] is not None


def test_classes_are_recorded_and_listed_on_redis(unique_name: str) -> None:
    from tests.conftest import REDIS_URL

    url = f"{REDIS_URL}?queue={unique_name}"
    _send_arm_and_plain(url)
    with open_broker(url) as base:
        assert list_classes(base) == ["cap-arch-arm64"]
    with PlacedBroker(open_broker(url), ARM) as broker:
        assert _received_xs(broker) + _received_xs(broker) == [1, 2]
        broker.purge()


def test_classes_are_listed_from_sqs_queue_names(moto_endpoint: str, unique_name: str) -> None:
    url = f"sqs://{unique_name}?region=us-east-1&endpoint_url={moto_endpoint}"
    _send_arm_and_plain(url)
    with open_broker(url) as base:
        assert list_classes(base) == ["cap-arch-arm64"]
    with PlacedBroker(open_broker(url), ARM) as broker:
        assert _received_xs(broker) + _received_xs(broker) == [1, 2]


# -- devices ---------------------------------------------------------------------------------


def test_each_cuda_server_sees_only_its_own_gpu() -> None:
    plans = device_plans("cuda", 2)
    assert [p.env for p in plans] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert all(p.cpus is None for p in plans)


def test_each_neuron_server_sees_only_its_own_core() -> None:
    plans = device_plans("neuron", 3)
    assert [p.env["NEURON_RT_VISIBLE_CORES"] for p in plans] == ["0", "1", "2"]


def test_cpu_devices_get_disjoint_slices_of_the_cores() -> None:
    plans = device_plans("cpu", 2, cpus=frozenset({0, 1, 2, 3}))
    assert [sorted(p.cpus or ()) for p in plans] == [[0, 2], [1, 3]]
    assert all(p.env == {} for p in plans)


def test_more_cpu_devices_than_cores_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="3 CPU devices need at least 3 cores"):
        device_plans("cpu", 3, cpus=frozenset({0, 1}))


def test_an_unknown_device_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device_kind must be one of cpu, cuda, neuron"):
        device_plans("tpu", 1)


def test_workers_take_device_sockets_in_turn(tmp_path: Path) -> None:
    sockets = [tmp_path / "a.sock", tmp_path / "b.sock"]
    env = device_environment(sockets, tmp_path)
    picked = [pick_device_socket(env) for _ in range(4)]
    assert picked == [sockets[0], sockets[1], sockets[0], sockets[1]]
    assert set(env) == {DEVICE_SOCKETS_ENV, DEVICE_COUNTER_ENV}


def test_a_node_with_one_server_picks_no_device_socket() -> None:
    assert (
        pick_device_socket({k: v for k, v in os.environ.items() if k != DEVICE_SOCKETS_ENV}) is None
    )


# -- configuration ---------------------------------------------------------------------------


def test_labels_come_from_the_file_or_from_fleetinfer_labels(tmp_path: Path) -> None:
    from fleetinfer.config import load_settings, node_config

    (tmp_path / "fleetinfer.toml").write_text(
        '[node]\ntarget = "t:app"\nlabels = { arch = "arm64" }\ndevices = 2\n'
    )
    settings = load_settings(environ={}, cwd=tmp_path)
    assert node_config(settings).attributes["arch"] == "arm64"
    assert node_config(settings).devices == 2
    from_env = load_settings(
        environ={"FLEETINFER_LABELS": "label.pool=gold,arch=amd64"}, cwd=tmp_path
    )
    assert from_env.labels == {"label.pool": "gold", "arch": "amd64"}


def test_a_bad_label_key_stops_the_node_before_it_starts(tmp_path: Path) -> None:
    from fleetinfer.node.agent import NodeAgent, NodeConfig

    with pytest.raises(ConfigError, match=r"unknown capability key 'pool'.*labels"):
        NodeAgent(NodeConfig(target="tests.apps.jobs:app", labels={"pool": "gold"}))


class _FakeServer:
    def __init__(self, options: ServerOptions, folder: Path) -> None:
        self.options = options
        self.socket_path = folder / f"{len(list(folder.glob('*.sock')))}.sock"
        self.socket_path.touch()
        self.cleaned = False

    def cleanup(self) -> None:
        self.cleaned = True


def test_each_device_server_starts_with_its_own_environment(tmp_path: Path) -> None:
    options = ServerOptions(models=tmp_path, instance_count=1)
    started: list[_FakeServer] = []

    def start(narrowed: ServerOptions) -> Any:
        started.append(_FakeServer(narrowed, tmp_path))
        return started[-1]

    servers, env = start_device_servers(options, device_plans("neuron", 2), start)
    assert servers == started
    assert [s.options.env for s in started] == [
        {"NEURON_RT_VISIBLE_CORES": "0"},
        {"NEURON_RT_VISIBLE_CORES": "1"},
    ]
    assert all(s.options.instance_count == 1 for s in started)
    assert env[DEVICE_SOCKETS_ENV] == os.pathsep.join(str(s.socket_path) for s in started)


def test_a_device_server_that_fails_stops_the_ones_started(tmp_path: Path) -> None:
    started: list[_FakeServer] = []

    def start(narrowed: ServerOptions) -> Any:
        if started:
            raise ConfigError("the model server did not become ready")
        started.append(_FakeServer(narrowed, tmp_path))
        return started[-1]

    plans = device_plans("cpu", 2, cpus=frozenset({0, 1}))
    with pytest.raises(ConfigError, match="did not become ready"):
        start_device_servers(ServerOptions(models=tmp_path), plans, start)
    assert started[0].cleaned
    assert started[0].options.cpus == frozenset({0})
    assert started[0].options.intra_op_threads == 1
