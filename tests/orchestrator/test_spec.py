import pytest
from conftest import REPO

from tipslab.orchestrator.config import read_yaml
from tipslab.orchestrator.errors import ConfigError
from tipslab.orchestrator.spec import load_spec

SMOKE = REPO / "ablations" / "smoke.yaml"
BASE = REPO / "ablations" / "base" / "tips_tiny.yaml"
METRIC = "metrics: [{key: eval/scenes/i2t_r1}]\n"


def spec_file(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: t\nbase: {BASE}\n" + body)
    return path


def test_smoke_spec_gives_one_trial_per_variant_and_seed(home):
    plan = load_spec(SMOKE, smoke=True)
    assert [t.name for t in plan.trials] == ["mim_off-seed0", "mim_on-seed0"]
    off, on = plan.trials
    assert off.config["loss"]["mim_weight"] == 0 and on.config["loss"]["mim_weight"] > 0
    assert off.config_hash != on.config_hash
    assert plan.size == "smoke" and [m["key"] for m in plan.spec["metrics"]][0] == "eval/scenes/i2t_r1"


def test_smoke_overlay_replaces_seeds_resources_and_overrides(tmp_path, home):
    path = spec_file(
        tmp_path,
        """
overrides: {train.steps: 1000}
variants: {a: {}, b: {loss.distill_weight: 0}}
seeds: [0]
metrics: [{key: eval/scenes/seg_miou}]
resources: {workers_per_trial: 8, gpus_per_worker: 1}
smoke:
  overrides: {train.steps: 5}
  resources: {workers_per_trial: 1, gpus_per_worker: 0}
  seeds: [0, 1, 2]
""",
    )
    full, smoke = load_spec(path), load_spec(path, smoke=True)
    assert len(full.trials) == 2 and full.trials[0].config["train"]["num_workers"] == 8
    assert full.trials[0].config["train"]["steps"] == 1000
    assert len(smoke.trials) == 6 and {t.seed for t in smoke.trials} == {0, 1, 2}
    assert all(t.config["train"]["steps"] == 5 and t.config["train"]["num_workers"] == 1 for t in smoke.trials)
    assert all(t.config["train"]["seed"] == t.seed for t in smoke.trials)
    assert smoke.trials[0].config_hash != smoke.trials[1].config_hash  # seeds differ


def test_smoke_overlays_the_whole_spec_base_variants_and_clears_a_mapping(tmp_path, home):
    big = tmp_path / "big.yaml"
    big.write_text("model: {size: S}\n")
    path = tmp_path / "spec.yaml"
    path.write_text(f"""name: t
base: big.yaml
overrides: {{eval.datasets: {{flickr30k: /nowhere/flickr}}, train.steps: 100}}
variants: {{a: {{loss.mim_weight: 2}}, b: {{loss.mim_weight: 0}}}}
baseline: a
{METRIC}
smoke:
  base: {BASE}
  overrides: {{eval.datasets: {{}}}}
  variants: {{a: {{loss.mim_weight: 0.2}}}}
""")
    full, smoke = load_spec(path), load_spec(path, smoke=True)
    assert full.trials[0].config["model"]["size"] == "S" and smoke.trials[0].config["model"]["size"] == "tiny"
    assert full.trials[0].config["eval"]["datasets"] == {"flickr30k": "/nowhere/flickr"}
    assert smoke.trials[0].config["eval"]["datasets"] == {}  # an empty mapping clears
    assert smoke.trials[0].config["train"]["steps"] == 100  # the rest of `overrides` stays
    assert [t.config["loss"]["mim_weight"] for t in smoke.trials] == [0.2, 0.0]


def test_axes_make_the_product_of_rows_tagged_by_axis_value(tmp_path, home):
    path = spec_file(
        tmp_path,
        METRIC
        + """
axes:
  captions: {web: {loss.caption_mode: web}, dual: {loss.caption_mode: dual_cls}}
  loss.mask_ratio: [0.5, 0.75]
baseline: dual/mask_ratio=0.75
seeds: [0, 1]
""",
    )
    plan = load_spec(path)
    assert list(plan.spec["variants"]) == [
        "web/mask_ratio=0.5",
        "web/mask_ratio=0.75",
        "dual/mask_ratio=0.5",
        "dual/mask_ratio=0.75",
    ]
    assert len(plan.trials) == 8 and len({t.config_hash for t in plan.trials}) == 8
    trial = next(t for t in plan.trials if t.variant == "dual/mask_ratio=0.5" and t.seed == 1)
    assert trial.tags == {"captions": "dual", "loss.mask_ratio": "mask_ratio=0.5"}
    assert trial.config["loss"]["caption_mode"] == "dual_cls" and trial.config["loss"]["mask_ratio"] == 0.5


def test_grid_search_becomes_rows_and_sampled_search_keeps_its_space(tmp_path, home):
    grid = load_spec(
        spec_file(
            tmp_path,
            METRIC
            + """
variants: {tips: {}}
search: {algorithm: grid, metric: eval/scenes/i2t_r1, mode: max,
         space: {loss.distill_weight: [0.5, 1.0], loss.mim_weight: [1, 2]}}
""",
        )
    )
    assert [t.variant for t in grid.trials] == [
        "tips[distill_weight=0.5,mim_weight=1]",
        "tips[distill_weight=0.5,mim_weight=2]",
        "tips[distill_weight=1,mim_weight=1]",
        "tips[distill_weight=1,mim_weight=2]",
    ]
    assert grid.trials[1].config["loss"]["mim_weight"] == 2 and not grid.sampled
    tpe = load_spec(
        spec_file(
            tmp_path,
            METRIC
            + """
variants: {tips: {}}
search: {algorithm: tpe, metric: eval/scenes/i2t_r1, mode: max, num_samples: 3,
         space: {loss.distill_weight: {loguniform: [0.1, 2.0]}}}
""",
        )
    )
    assert tpe.sampled and len(tpe.trials) == 1
    sample = tpe.sampled_trial("tips", 0, {"loss.distill_weight": 0.37})
    assert sample.config["loss"]["distill_weight"] == 0.37 and sample.name == "tips[distill_weight=0.37]-seed0"
    assert sample.config_hash != tpe.trials[0].config_hash and sample.tags == {"loss.distill_weight": "0.37"}


def test_command_line_overrides_reach_every_trial(home):
    plan = load_spec(SMOKE, smoke=True, overrides=["train.steps=3"])
    assert {t.config["train"]["steps"] for t in plan.trials} == {3}


SEARCH = (
    "variants: {a: {}}\n"
    + METRIC
    + "search: {algorithm: tpe, num_samples: 2, space: {loss.mim_weight: {uniform: [0, 1]}}, "
)


@pytest.mark.parametrize(
    "body, message",
    [
        ("variants: {a: {loss.mim_wieght: 0}}\n", r"spec\.yaml: variants\.a: loss\.mim_wieght"),
        ("variants: {a: {}}\nmetrics: [{key: eval/nyuv2/depth_rmse}]\n", r"metrics\[0\]\.key: no probe produces"),
        (
            "variants: {a: {}}\nmetrics: [{key: eval/scenes/normals_angle}]\n",
            r"spec\.yaml: metrics\[0\]\.key: 'eval/scenes/normals_angle': no probe produces the metric 'normals_angle'",
        ),
        ("variants: {a: {}}\nbaseline: b\n", r"baseline: 'b' is not one of the variants"),
        # EvalConfig checks its probes as the variant is composed (jobs/config.py)
        (
            "variants: {a: {eval.probes: [retrieval, telepathy]}}\n",
            r"spec\.yaml: variants\.a: eval\.probes: .*telepathy",
        ),
        ("variants: {a: {}}\nreference: {source: x, b: {eval/scenes/i2t_r1: 1}}\n", r"reference\.b: no such variant"),
        (
            "variants: {a: {}}\n" + METRIC + "reference: {a: {eval/scenes/seg_miou: 1}}\n",
            r"reference\.a\.eval/scenes/seg_miou: not one of the spec's metrics",
        ),
        (
            "variants: {a: {}}\n" + METRIC + "reference: {a: {eval/scenes/i2t_r1: high}}\n",
            r"reference\.a\.eval/scenes/i2t_r1: 'high' is not a number",
        ),
        ("variants: {a: {}}\nmetrics: [{key: eval/scenes/i2t_r1, goal: up}]\n", r"metrics\[0\]\.goal"),
        ("variants: {a: {}}\ncolour: red\n", r"spec\.yaml: colour"),
        ("variants: {}\n", r"variants: a spec needs at least one variant"),
        ("variants: {a: {}}\nseeds: []\n", r"seeds: at least one seed"),
        ("variants: {a: {}}\nseeds: [1, 1]\n", r"seeds: \[1, 1\] repeats a seed"),
        ("variants: {a: {}}\nresources: {workers_per_trial: two}\n", r"resources\.workers_per_trial"),
        ("variants: {a: {}}\naxes: {x: [1]}\n", r"axes: give `variants` or `axes`, not both"),
        ("axes: {loss.mim_weight: []}\n", r"axes\.loss\.mim_weight: expected a non-empty list"),
        ("variants: {a: {}}\nsmoke: {colour: red}\n", r"spec\.yaml: smoke: colour"),
        (SEARCH + "metric: train/loss, mode: min}\n", r"search\.metric: 'train/loss' is not an eval key"),
        (SEARCH + "metric: eval/scenes/i2t_r1}\n", r"search\.mode: '' must be 'max' or 'min'"),
        (SEARCH + "metric: eval/nyu/x, mode: max}\n", r"search\.metric: no probe produces 'eval/nyu/x'"),
        (
            SEARCH + "metric: eval/scenes/i2t_r1, mode: max, scheduler: asha}\n",
            r"search\.scheduler: asha .* train\.probe_every",
        ),
        # the objective is a final-evaluation key, but the periodic probe that ASHA reads never reports it
        (
            "overrides: {train.probe_every: 10}\n"
            + SEARCH
            + "metric: eval/scenes/seg_miou, mode: max, scheduler: asha}\n",
            r"search\.metric: asha reads 'eval/scenes/seg_miou' during training, but the periodic probe reports "
            r"\['eval/scenes/i2t_r1', 'eval/scenes/t2i_r1'\] .* train\.probe_metrics",
        ),
        (
            "overrides: {train.probe_every: 10, train.probe_metrics: [eval/scenes/knn_top1]}\n"
            + SEARCH
            + "metric: eval/scenes/knn_top1, mode: max, scheduler: asha}\n",
            r"variant 'a': train\.probe_metrics\[0\]: the periodic probe cannot report 'eval/scenes/knn_top1'",
        ),
        (
            "variants: {a: {}}\n" + METRIC + "search: {algorithm: tpe, metric: eval/scenes/i2t_r1, mode: max, "
            "space: {loss.mim_weight: [0, 1]}}\n",
            r"search\.space\.loss\.mim_weight: TPE samples a domain",
        ),
        (
            "variants: {a: {}}\n" + METRIC + "search: {algorithm: bayes, metric: eval/scenes/i2t_r1, mode: max, "
            "space: {loss.mim_weight: [0, 1]}}\n",
            r"search\.algorithm: 'bayes' is not one of grid, random, tpe",
        ),
        (
            "variants: {a: {}}\n" + METRIC + "search: {algorithm: random, metric: eval/scenes/i2t_r1, mode: max, "
            "space: {loss.mim_weight: {uniform: [1, 0]}}}\n",
            r"search\.space\.loss\.mim_weight\.uniform: expected \[low, high\]",
        ),
        (
            "variants: {a: {}}\n" + METRIC + "search: {algorithm: grid, metric: eval/scenes/i2t_r1, mode: max, "
            "space: {loss.mim_wieght: [0, 1]}}\n",
            r"variants\.a\[mim_wieght=0\]: loss\.mim_wieght",
        ),
    ],
)
def test_spec_mistakes_name_the_file_and_key(tmp_path, home, body, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(spec_file(tmp_path, body))


def test_asha_on_a_dense_metric_the_periodic_probe_reports_is_accepted(tmp_path, home):
    body = (
        "overrides: {train.probe_every: 10, train.probe_metrics: [eval/scenes/seg_miou]}\n"
        + SEARCH
        + "metric: eval/scenes/seg_miou, mode: max, scheduler: asha}\n"
    )
    plan = load_spec(spec_file(tmp_path, body))
    assert plan.search.scheduler == "asha" and plan.trials[0].config["train"]["probe_metrics"] == [
        "eval/scenes/seg_miou"
    ]


def test_spec_needs_name_and_base(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("variants: {a: {}}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: name: missing"):
        load_spec(path)


SPECS = sorted(p for p in (REPO / "ablations").glob("*.yaml"))


@pytest.fixture
def cluster_data(tmp_path, monkeypatch):
    """Full specs name data a cluster has (relative to where they run): placeholders stand in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "webli").mkdir(parents=True)
    (tmp_path / "data" / "webli" / "tag_vocab.txt").write_text("red\nsquare\n")


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_ablation_spec_validates(spec, smoke, home, cluster_data):
    plan = load_spec(spec, smoke=smoke)
    assert plan.trials and plan.spec["metrics"]
    keys = {m["key"] for m in plan.spec["metrics"]}
    for variant, numbers in plan.spec["reference"].items():
        if variant != "source":
            assert variant in plan.spec["variants"] and (smoke or set(numbers) <= keys)
    if smoke:
        for t in plan.trials:
            assert t.config["model"]["size"] == "tiny" and t.config["train"]["gpus_per_worker"] == 0
            assert t.config["data"]["source"] == "scenes" and t.config["train"]["steps"] <= 200
    elif spec.stem != "smoke":  # smoke.yaml is laptop-sized at both sizes
        assert all(t.config["train"]["gpus_per_worker"] >= 1 for t in plan.trials)


def test_the_paper_ablations_are_all_there(home, cluster_data):
    names = {load_spec(p).spec["name"] for p in SPECS}
    assert {
        "tips-caption-source",
        "tips-losses",
        "tips-mask-ratio",
        "tips-sequential",
        "tips-loss-weights",
        "tag2text-tags",
    } <= names
    masks = load_spec(REPO / "ablations" / "tips_mask_ratio.yaml", smoke=True)
    assert {(t.config["loss"]["mask_ratio"], t.config["loss"]["mask_mode"]) for t in masks.trials} == {
        (0.25, "random"),
        (0.5, "random"),
        (0.75, "random"),
        (0.75, "blockwise"),
    }
    seq = next(
        t
        for t in load_spec(REPO / "ablations" / "tips_sequential.yaml", smoke=True).trials
        if t.variant == "clip_then_mim"
    )
    assert [s["name"] for s in seq.config["train"]["stages"]] == ["clip", "mim"]
    tags = {t.variant: t for t in load_spec(REPO / "ablations" / "tag2text_tags.yaml", smoke=True).trials}
    assert tags["tags_on"].config["model"]["num_tags"] == 18 and tags["tags_off"].config["loss"]["tag_weight"] == 0


# The mini size: every paper spec's `mini` overlay, procedural scenes on CPU with three seeds.
ABLATIONS = REPO / "ablations"
PAPER_SPECS = [
    "tips_caption_source",
    "tips_losses",
    "tips_mask_ratio",
    "tips_sequential",
    "tips_loss_weights",
    "tag2text_tags",
]
MINI_SPECS = [p for p in SPECS if "mini" in read_yaml(p)]
SCENE_PROBES = {
    "eval/scenes/i2t_r1",
    "eval/scenes/t2i_r1",
    "eval/scenes/seg_miou",
    "eval/scenes/depth_rmse",
    "eval/scenes/normals_mean_angle",
    "eval/scenes/knn_top1",
}


@pytest.mark.parametrize(
    "name, variants",
    [
        (
            "tips_losses",
            [
                "clip",
                "clip+distill",
                "clip+distill+mim",
                "ours:clip_view=masked",
                "ours:sinkhorn",
                "ours:shared_heads",
            ],
        ),
        ("tips_caption_source", ["web", "synthetic", "both_single_cls", "dual_cls"]),
    ],
)
def test_each_size_plans_its_own_trials(name, variants, home, cluster_data):
    path = ABLATIONS / f"{name}.yaml"
    mini = load_spec(path, size="mini")
    assert mini.size == "mini" and mini.spec["seeds"] == [0, 1, 2]
    paper_rows = [v for v in variants if not v.startswith("ours:")]  # mini drops the rows of ours
    assert [t.name for t in mini.trials] == [f"{v}-seed{s}" for v in paper_rows for s in (0, 1, 2)]
    for t in mini.trials:
        c = t.config
        assert (c["data"]["source"], c["model"]["size"], c["train"]["steps"]) == ("scenes", "tiny", 1500)
        assert c["eval"]["datasets"] == {} and c["train"]["gpus_per_worker"] == 0 and c["train"]["seed"] == t.seed
    assert SCENE_PROBES <= {m["key"] for m in mini.spec["metrics"]}  # every scene probe, and more where a spec asks
    assert len({t.config_hash for t in mini.trials}) == len(mini.trials)

    smoke = load_spec(path, smoke=True)  # --smoke is --size smoke
    assert smoke.size == "smoke" and [t.name for t in smoke.trials] == [f"{v}-seed0" for v in variants]
    assert {t.config["train"]["steps"] for t in smoke.trials} == {60}
    assert [t.config_hash for t in load_spec(path, size="smoke").trials] == [t.config_hash for t in smoke.trials]

    full = load_spec(path, size="full")
    assert full.size == "full" and [t.name for t in full.trials] == [f"{v}-seed0" for v in variants]
    assert {
        (t.config["data"]["source"], t.config["model"]["size"], t.config["train"]["steps"]) for t in full.trials
    } == {("shards", "B", 70000)}
    assert [t.config_hash for t in load_spec(path).trials] == [t.config_hash for t in full.trials]


def test_mini_keeps_the_rows_own_settings(home):
    losses = {t.variant: t.config["loss"] for t in load_spec(ABLATIONS / "tips_losses.yaml", size="mini").trials}
    assert [
        (losses[v]["distill_weight"], losses[v]["mim_weight"], losses[v]["caption_mode"])
        for v in ("clip", "clip+distill", "clip+distill+mim")
    ] == [(0, 0, "web"), (1, 0, "web"), (1, 2, "web")]  # the paper's α and β
    captions = {
        t.variant: t.config["loss"] for t in load_spec(ABLATIONS / "tips_caption_source.yaml", size="mini").trials
    }
    assert {v: (c["caption_mode"], c["distill_weight"], c["mim_weight"]) for v, c in captions.items()} == {
        v: (v, 0, 0) for v in ("web", "synthetic", "both_single_cls", "dual_cls")
    }


# The open choices (ours: rows, no paper numbers): each row is its spec's full row with one choice
# set the other way, at every size (the mini and smoke overlays scale α and β alike).
OURS = {
    "tips_losses": (
        "clip+distill+mim",
        {
            "ours:clip_view=masked": {("loss", "clip_view"): ("clean", "masked")},
            "ours:sinkhorn": {("loss", "centering"): ("mean", "sinkhorn_knopp")},
            "ours:shared_heads": {
                ("model", "shared_heads"): (False, True),
                ("model", "distill_prototypes"): (65536, 32768),
            },
        },
    ),
    "tips_sequential": ("clip_then_mim", {"ours:clip_then_ssl": {("stage2", "clip_weight"): (1, 0)}}),
}


def differences(a: dict, b: dict) -> dict:
    def flat(c):
        out = {(s, k): v for s in ("loss", "model") for k, v in c[s].items()}
        stages = c["train"]["stages"]
        if stages:
            out.update({("stage2", k.split(".")[-1]): v for k, v in stages[1]["overrides"].items()})
        return out

    fa, fb = flat(a), flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("name", sorted(OURS))
@pytest.mark.parametrize("size", ["full", "mini", "smoke"])
def test_our_rows_change_one_open_choice_of_the_full_row_and_have_no_paper_numbers(name, size, home):
    """Where a size keeps a row of ours (the losses mini drops them, `drop:`)."""
    row, ours = OURS[name]
    plan = load_spec(ABLATIONS / f"{name}.yaml", size=size)
    configs = {t.variant: t.config for t in plan.trials if t.seed == plan.trials[0].seed}
    for variant, changed in ours.items():
        if variant in plan.spec.get("drop", []):
            assert variant not in configs  # a size that leaves the row out
            continue
        assert differences(configs[row], configs[variant]) == changed, variant
        assert variant not in plan.spec.get("reference", {})
    assert {v for v in configs if not v.startswith("ours:")} <= set(plan.spec["reference"])  # the paper's rows


@pytest.mark.parametrize("spec", MINI_SPECS, ids=[p.stem for p in MINI_SPECS])
def test_every_mini_overlay_validates(spec, home):
    plan = load_spec(spec, size="mini")
    smoke_steps = max(t.config["train"]["steps"] for t in load_spec(spec, size="smoke").trials)
    assert plan.spec["seeds"] == [0, 1, 2] and len(plan.trials) == 3 * len(plan.spec["variants"])
    assert SCENE_PROBES <= {m["key"] for m in plan.spec["metrics"]}
    assert all(m["key"].startswith("eval/scenes/") for m in plan.spec["metrics"])
    assert not plan.sampled  # every row takes the three seeds
    for t in plan.trials:
        c = t.config
        assert c["model"]["size"] in ("tiny", "small-cpu") and c["train"]["gpus_per_worker"] == 0
        assert c["data"]["source"] == "scenes" and c["eval"]["datasets"] == {}
        assert smoke_steps < c["train"]["steps"] <= 2000  # longer than smoke, short enough for a 2-core trial
        assert c["train"]["num_workers"] * c["train"]["cpus_per_worker"] + c["data"]["cpus"] <= 2


def test_every_paper_spec_has_a_mini_size():
    assert sorted(p.stem for p in MINI_SPECS) == sorted(PAPER_SPECS)


@pytest.mark.parametrize(
    "size, spec, message",
    [
        ("medium", "tips_losses", r"tips_losses\.yaml: size: 'medium' is not a size; sizes: full, mini, smoke$"),
        (
            "mini",
            "smoke",
            r"ablations/smoke\.yaml: mini: the spec has no `mini:` overlay, so it cannot run at size mini",
        ),
    ],
)
def test_an_unknown_size_or_a_missing_overlay_names_the_file_and_key(size, spec, message, home):
    with pytest.raises(ConfigError, match=message):
        load_spec(ABLATIONS / f"{spec}.yaml", size=size)


def test_smoke_needs_a_smoke_overlay_too(tmp_path, home):
    path = spec_file(tmp_path, "variants: {a: {}}\n" + METRIC)
    with pytest.raises(
        ConfigError,
        match=r"spec\.yaml: smoke: the spec has no `smoke:` overlay, so it cannot run at size smoke "
        r"\(its sizes: full\)",
    ):
        load_spec(path, smoke=True)


MINI = "variants: {a: {}, b: {loss.mim_weight: 0}}\n" + METRIC + "smoke: {}\n"


@pytest.mark.parametrize(
    "body, size, message",
    [
        # the overlay's own keys are checked whichever size runs
        (MINI + "mini: {colour: red}\n", "full", r"spec\.yaml: mini: colour"),
        (MINI + "mini: {name: other}\n", "smoke", r"spec\.yaml: mini\.name: the mini overlay cannot change `name`"),
        (MINI + "mini: {smoke: {seeds: [1]}}\n", "full", r"spec\.yaml: mini\.smoke: the mini overlay cannot change"),
        (MINI + "mini: {seeds: [0, 0]}\n", "mini", r"spec\.yaml: mini overlay: seeds: \[0, 0\] repeats a seed"),
        # and what it resolves to, when that size runs
        (
            MINI + "mini: {variants: {a: {loss.mim_wieght: 0}}}\n",
            "mini",
            r"spec\.yaml: mini overlay: variants\.a: loss\.mim_wieght",
        ),
        (MINI + "mini: {overrides: {train.stepz: 5}}\n", "mini", r"spec\.yaml: mini overlay: overrides: train\.stepz"),
        (
            MINI + "mini: {metrics: [{key: eval/nyuv2/depth_rmse}]}\n",
            "mini",
            r"spec\.yaml: mini overlay: metrics\[0\]\.key: no probe produces 'eval/nyuv2/depth_rmse'",
        ),
        (
            MINI + "mini: {metrics: [{key: eval/scenes/normals_angle}]}\n",
            "mini",
            r"spec\.yaml: mini overlay: metrics\[0\]\.key: .*no probe produces the metric 'normals_angle'",
        ),
        (MINI + "mini: {baseline: c}\n", "mini", r"spec\.yaml: mini overlay: baseline: 'c' is not one of the variants"),
    ],
)
def test_mini_overlay_mistakes_name_the_file_and_key(tmp_path, home, body, size, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(spec_file(tmp_path, body), size=size)


RANDOM = (
    "search: {algorithm: random, metric: eval/scenes/i2t_r1, mode: max, space: {loss.mim_weight: {uniform: [0, 1]}}, "
)


@pytest.mark.parametrize(
    "body, message",
    [
        # counted before anything is expanded: 10**12 rows fail as fast as 10**4
        (
            "axes: {"
            + ", ".join(f"train.warmup_steps{i}: [{', '.join(map(str, range(100)))}]" for i in range(6))
            + "}\n",
            r"spec\.yaml: axes: 100 x 100 x 100 x 100 x 100 x 100 = 1000000000000 variants, more than the 1000",
        ),
        ("variants: {a: {}}\nseeds: [" + ", ".join(map(str, range(1001))) + "]\n", r"seeds: 1001 seeds, more than"),
        (
            "variants: {"
            + ", ".join(f"v{i}: {{}}" for i in range(100))
            + "}\nseeds: ["
            + ", ".join(map(str, range(11)))
            + "]\n",
            r"seeds: 100 variants x 11 seeds = 1100 trials, more than the 1000",
        ),
        ("variants: {a: {}}\nseeds: [-1]\n", r"seeds: -1 is out of range: must be in \[0, 4294967295\]"),
        (
            "variants: {a: {}}\n" + METRIC + RANDOM + "num_samples: 2000000000}\n",
            r"search\.num_samples: 2000000000 is out",
        ),
        ("variants: {a: {}}\n" + METRIC + RANDOM + "num_samples: 0}\n", r"search\.num_samples: 0 is out of range"),
        (
            "variants: {a: {}, b: {}}\n" + METRIC + "search: {algorithm: grid, metric: eval/scenes/i2t_r1, mode: max, "
            "space: {loss.mim_weight: ["
            + ", ".join(map(str, range(30)))
            + "], loss.distill_weight: ["
            + ", ".join(map(str, range(20)))
            + "]}}\n",
            r"search\.space: 2 variant\(s\) x 30 x 20 grid points = 1200 rows, more than the 1000",
        ),
        ("variants: {a: {}}\nresources: {max_concurrent_trials: -1}\n", r"resources\.max_concurrent_trials: -1 is out"),
        ("variants: {a: {}}\nresources: {gpus_per_worker: .nan}\n", r"resources\.gpus_per_worker: nan is out"),
        ("variants: {a: {}}\nbase: .\n", r"spec\.yaml: base: .*: no such file"),
    ],
)
def test_spec_sizes_are_bounded_with_the_count_and_the_key(tmp_path, home, body, message):
    import time

    start = time.process_time()
    with pytest.raises(ConfigError, match=message):
        load_spec(
            spec_file(tmp_path, body.replace("base: .\n", "")) if "base: ." not in body else _rebased(tmp_path, body)
        )
    assert time.process_time() - start < 5


def _rebased(tmp_path, body):
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\n" + body)
    return path


def test_a_spec_of_a_thousand_trials_is_composed_once_per_row(tmp_path, home):
    """100 rows x 10 seeds: each row is composed and checked once, its seeds copied (the seeds differ
    in train.seed only), so the plan takes CPU seconds, not the minutes of one composition a trial."""
    import time

    rows = ", ".join(f"r{i}: {{train.lr: {0.001 * (i + 1):.4f}}}" for i in range(100))
    path = spec_file(tmp_path, f"variants: {{{rows}}}\nseeds: [{', '.join(map(str, range(10)))}]\n")
    start = time.process_time()
    plan = load_spec(path)
    seconds = time.process_time() - start
    print(f"\n1000 trials (100 rows x 10 seeds) planned in {seconds:.1f} CPU-s")
    assert len(plan.trials) == 1000 and len({t.config_hash for t in plan.trials}) == 1000
    r7 = [t for t in plan.trials if t.variant == "r7"]
    assert [t.config["train"]["seed"] for t in r7] == list(range(10))
    assert {t.config["train"]["lr"] for t in r7} == {0.008}
    assert plan.trials[0].config["train"] is not plan.trials[1].config["train"]  # copies, not shared
    assert seconds < 60
