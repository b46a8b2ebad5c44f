"""A sweep that one trial of can never fit on the cluster is refused before any trial,
naming the shortfall, instead of waiting 30 minutes per attempt for workers."""

import pytest

from raysuite.spec import SpecError, parse_spec
from raysuite.tune import capacity


def spec(workers: int, gpus: float, cpus: float = 1):
    return parse_spec({
        "name": "t", "method": "iou_simsiam_seg",
        "data": {"format": "flare22", "root": "/tmp/nowhere", "synthetic_if_missing": True},
        "objective": {"metric": "val/dice"},
        "resources": {"workers_per_trial": workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus},
    })  # fmt: skip


def node(cpu: float, gpu: float = 0, alive: bool = True):
    return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


def test_two_gpu_workers_on_a_one_gpu_machine_are_refused_naming_the_shortfall():
    offer = capacity.live_offer([node(16, 1)], bootstrap=capacity.Path("/nonexistent"))
    with pytest.raises(SpecError, match=r"resources: one trial reserves 2 worker\(s\) x \{CPU: 1, GPU: 1\}.*GPU 1 in all"):
        capacity.check(spec(2, 1), offer)


def test_bundles_must_fit_on_one_node_each():
    # 2 GPUs in all, but a worker wanting 2 GPUs fits on neither node
    offer = capacity.Offer([{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], {})
    assert capacity.shortfall(capacity.trial_bundles(spec(2, 1)), offer) is None
    assert "at most CPU 8, GPU 1 on one node" in capacity.shortfall(capacity.trial_bundles(spec(1, 2)), offer)


def test_dead_nodes_offer_nothing():
    offer = capacity.live_offer([node(8, 4, alive=False), node(2)], bootstrap=capacity.Path("/nonexistent"))
    with pytest.raises(SpecError, match="resources"):
        capacity.check(spec(1, 1), offer)


def test_an_autoscaling_cluster_counts_the_nodes_its_types_may_add(tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(
        "max_workers: 8\nhead_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 8}, node_config: {}}\n"
        "  gpu: {min_workers: 0, max_workers: 2, resources: {CPU: 8, GPU: 1}, node_config: {}}\n"
    )
    offer = capacity.live_offer([node(8)], bootstrap=bootstrap)
    assert capacity.check(spec(2, 1), offer) is None  # two new GPU nodes hold it
    with pytest.raises(SpecError, match=r"autoscaler may add gpu: \{'CPU': 8.0, 'GPU': 1.0\} x2"):
        capacity.check(spec(4, 1), offer)


def test_node_types_of_unknown_size_warn_instead_of_refusing(tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text("max_workers: 8\navailable_node_types:\n  gpu: {max_workers: 4, resources: {}, node_config: {}}\n")
    warning = capacity.check(spec(2, 1), capacity.live_offer([node(8)], bootstrap=bootstrap))
    assert warning.startswith("warning: one trial reserves") and "['gpu'] declare no resources" in warning


def test_the_widest_stage_sets_the_reservation_and_fractional_gpus_pack():
    # iou_simsiam_seg's stages all train with workers_per_trial workers; 4 x 0.5 GPU fit one GPU
    assert len(capacity.trial_bundles(spec(4, 0.5))) == 4
    assert capacity.shortfall(capacity.trial_bundles(spec(4, 0.5, cpus=2)), capacity.Offer([{"CPU": 8, "GPU": 2}], {})) is None
    assert capacity.shortfall(capacity.trial_bundles(spec(8, 0.5, cpus=1)), capacity.Offer([{"CPU": 8, "GPU": 2}], {}))
