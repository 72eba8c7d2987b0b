"""benchmarks/ablation.py: argument parsing and arm -> config override mapping (no training)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

import ablation
from xkd.config import load_config


def _config(arm, seed=1, extra=()):
    overrides = ablation.arm_overrides(arm, steps=250, spe=30, seed=seed, extra=list(extra))
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def test_grids_and_defaults():
    quick = ablation.parse_args(["--quick"])
    assert quick.grid == "quick" and quick.seeds == [0] and quick.arms == ["random", "ae", "xkd"]
    full = ablation.parse_args([])
    assert full.grid == "full" and full.seeds == [0, 1, 2] and full.steps == quick.steps == 500
    assert full.arms == [arm for arm in ablation.ARMS if arm not in ("xkd_k4", "xkd_mmd_dim")]  # the paper's
    assert ablation.global_batch_size(full) == 32
    assert ablation.global_batch_size(ablation.parse_args(["--set", "train.global_batch_size=8"])) == 8
    long = ablation.parse_args(["--long", "--set", "optim.min_lr=0.0005"])
    assert long.grid == "long" and long.steps == 2000 and long.arms == full.arms and long.seeds == [0, 1, 2]
    assert long.work == (ROOT / "runs" / "ablation" / "long").resolve()
    config = _config("xkd", extra=long.set)  # the grid's overrides reach the run; a --set of the same key wins
    assert config.train.max_micro_batch_size == 16 and config.optim.min_lr == 0.0005
    assert _config("xkd", extra=ablation.parse_args(["--long"]).set).optim.min_lr == 0.001
    assert full.set == [] and quick.set == []
    # Every grid runs one micro-batch of 16 per rank (the batch statistics of L_da and the centre).
    assert all(_config(arm, extra=grid.set).train.max_micro_batch_size == 16
               for arm in ("ae", "xkd") for grid in (full, quick, long))
    with pytest.raises(SystemExit):
        ablation.parse_args(["--quick", "--long"])
    custom = ablation.parse_args(["--arms", "ae", "xkd", "--seeds", "3", "4", "--steps", "40", "--set", "loss.kd_weight=2"])
    assert custom.arms == ["ae", "xkd"] and custom.seeds == [3, 4] and custom.steps == 40
    with pytest.raises(SystemExit):
        ablation.parse_args(["--arms", "nope"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--set", "novalue"])


def test_every_arm_of_the_issue_is_there():
    assert set(ablation.ARMS) == {"random", "recon_v", "ae", "ae+kd", "ae+da", "xkd", "xkd_local", "xkd_meanpool",
                                  "xkd_k4", "xkd_mmd_dim"}
    assert ablation.ARMS["random"] is None
    with pytest.raises(ValueError):
        ablation.arm_overrides("random", 10, 5, 0)


@pytest.mark.parametrize("arm, expected", [
    ("recon_v", dict(recon="video", kd=0.0, da=0.0, view="global", pool="refine")),
    ("ae", dict(recon="both", kd=0.0, da=0.0, view="global", pool="refine")),
    ("ae+kd", dict(recon="both", kd=1.0, da=0.0, view="global", pool="refine")),
    ("ae+da", dict(recon="both", kd=0.0, da=1.0, view="global", pool="refine")),
    ("xkd", dict(recon="both", kd=1.0, da=1.0, view="global", pool="refine")),
    ("xkd_local", dict(recon="both", kd=1.0, da=1.0, view="local", pool="refine")),
    ("xkd_meanpool", dict(recon="both", kd=1.0, da=1.0, view="global", pool="mean")),
    ("xkd_mmd_dim", dict(recon="both", kd=1.0, da=1.0, view="global", pool="refine", mmd_scale="dim")),
])
def test_arm_overrides_resolve_to_the_right_config(arm, expected):
    config = _config(arm)
    assert config.loss.recon_modalities == expected["recon"]
    assert config.loss.kd_weight == expected["kd"] and config.loss.da_weight == expected["da"]
    assert config.loss.ae_weight == 5.0
    assert config.model.teacher_view == expected["view"] and config.model.teacher_pool == expected["pool"]
    assert config.loss.mmd_distance_scale == expected.get("mmd_scale", "none")
    assert config.train.seed == 1
    assert config.model.head.out_dim == 8192  # the paper's head width, in which L_da is no pull to one point
    # The cosine schedule covers the steps: 250 steps at 30 steps/epoch -> 9 epochs.
    assert config.optim.epochs == 9 and 1 <= config.optim.warmup_epochs <= config.optim.epochs
    assert config.train.checkpoint_every_steps == 250


def test_samples_per_decode_arm_has_the_same_steps_in_as_many_fewer_epochs():
    """k = 4: an epoch reads each clip 4 times (4x the steps), so 250 steps at 30 clip-batches per
    epoch are 3 epochs of 120 steps; the schedule still spans the steps, as for k = 1 (9 x 30)."""
    config = _config("xkd_k4")
    assert config.data.samples_per_decode == 4 and config.loss.kd_weight == 1.0
    assert config.optim.epochs == 3 and config.train.checkpoint_every_steps == 250


def test_extra_overrides_apply_to_every_arm():
    assert _config("xkd", extra=["loss.kd_weight=2"]).loss.kd_weight == 2.0


def test_table_lists_paper_numbers_and_monitors():
    rows = {"xkd": [{"seed": 0, "video": 50.0, "audio": 80.0, "kl_video_to_audio": 0.5},
                    {"seed": 1, "video": 52.0, "audio": 82.0, "kl_video_to_audio": 0.7}],
            "random": [{"seed": 0, "video": 30.0, "audio": 40.0}]}
    summary = ablation.summarize(rows)
    assert summary["xkd"]["video"] == pytest.approx({"mean": 51.0, "std": 2 ** 0.5, "n": 2})
    table = ablation.markdown_table(summary)
    assert "84.7" in table and "91.0" in table and "51.0 ± 1.4" in table and "0.60 ± 0.14" in table
    assert "| random init | 30.0 | 40.0 | - |" in table  # one seed: no spread shown; no sounds probe given


def test_an_existing_corpus_must_match_the_options_of_the_run(tmp_path):
    """A corpus made with other make_av_corpus.py options than the run's (given or default) is refused,
    not silently measured."""
    (tmp_path / "corpus.json").write_text('{"difficulty": 0.3, "max_distractors": 0}')

    def check(*argv):
        return ablation.check_corpus(ablation.parse_args(["--corpus", str(tmp_path), *argv]))

    made = {"difficulty": 0.3, "max_distractors": 0, "class_colour": 0.0, "object_scale": 1.0}
    assert check("--class-colour", "0", "--object-scale", "1") == made
    with pytest.raises(SystemExit, match="--class-colour 0.0 --object-scale 1.0"):
        check()  # the grid's default corpus has a colour cue and a larger object: the error says what to add
    for wrong in (["--difficulty", "1"], ["--max-distractors", "3"], ["--class-colour", "0.5"]):
        with pytest.raises(SystemExit, match="difficulty|max_distractors|class_colour"):
            check("--class-colour", "0", "--object-scale", "1", *wrong)
    (tmp_path / "corpus.json").write_text(json.dumps(ablation.CORPUS))
    assert check() == ablation.CORPUS


def test_the_sounds_probe_keeps_only_recordings_never_pretrained_on(tmp_path):
    (tmp_path / "corpus.json").write_text('{"split_folds": {"pretrain": [1, 2], "probe_train": [3], "probe_test": [4]}}')
    rows = list(csv.DictReader(open(ablation.unheard_folds(tmp_path, tmp_path / "folds.csv"), newline="")))
    everything = list(csv.DictReader(open(ablation.SOUNDS / "folds.csv", newline="")))
    assert {row["fold"] for row in rows} == {"3", "4"}
    assert rows == [row for row in everything if row["fold"] in ("3", "4")]
    assert len({row["category"] for row in rows}) == len({row["category"] for row in everything}) == 22


def _pretrain_command(output, data="/data/a", port="1234", steps=2000, extra=()):
    return ["/venv/bin/deepspeed", "--master_port", port, "launch/pretrain.py", "--config", "configs/tiny.yaml",
            "--ds_config", "ds_configs/zero2.json", "--data", data, "--output", str(output),
            "--max-steps", str(steps), *ablation.arm_overrides("xkd", steps, 7, 0, list(extra))]


def test_a_run_directory_is_reused_only_with_the_settings_it_was_pretrained_with(tmp_path):
    """A rerun into the same --work continues; one with other steps or overrides must not report the old
    runs as the new grid's."""
    log = tmp_path / "runs" / "xkd" / "seed0" / "pretrain.log"
    log.parent.mkdir(parents=True)
    long = ablation.parse_args(["--long"]).set
    log.write_text("$ " + " ".join(_pretrain_command(log.parent, extra=long)) + "\n[rank0] step 5 ...\n")
    # The port, the paths and the order of the same overrides do not make another run.
    moved = _pretrain_command("/elsewhere/seed0", data="/moved/shards", port="999", extra=list(reversed(long)))
    ablation.check_existing_run(log, moved)
    with pytest.raises(SystemExit, match=r"for: optim\.min_lr 0\.001 there, unset here\. Give"):
        ablation.check_existing_run(log, _pretrain_command(log.parent))  # the default grid's settings
    with pytest.raises(SystemExit, match=r": --max-steps 2000 there, 500 here; optim\.epochs 286 there, 72 here; "):
        ablation.check_existing_run(log, _pretrain_command(log.parent, steps=500, extra=long))
    with pytest.raises(SystemExit, match=r": loss\.kd_weight unset there, 2 here\."):
        ablation.check_existing_run(log, _pretrain_command(log.parent, extra=[*long, "loss.kd_weight=2"]))
    # A value with spaces (as the log writes it) is the same setting.
    sets = ["probe.sets=[{name: a, data: b}]"]
    log.write_text("$ " + " ".join(_pretrain_command(log.parent, extra=[*long, *sets])) + "\n")
    ablation.check_existing_run(log, _pretrain_command(log.parent, extra=[*long, *sets]))
    log.write_text("$ " + " ".join(_pretrain_command(log.parent, extra=long)) + "\n")
    # A later override of the same key wins, as in load_config.
    ablation.check_existing_run(log, _pretrain_command(log.parent, extra=[*long, "optim.min_lr=5", "optim.min_lr=0.001"]))


def _code_tree(root):
    for name, text in {"xkd/losses.py": "a = 1\n", "configs/tiny.yaml": "x: 1\n", "launch/pretrain.py": "",
                       "benchmarks/ablation.py": "arms\n", "README.md": "words\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_code_fingerprint_changes_with_the_library_and_configs_only(tmp_path):
    """Any change to the code a run executes (library, entry points, configs), committed or not, is another
    fingerprint; this script (settings are compared by run_settings), docs and bytecode are not."""
    _code_tree(tmp_path)
    first = ablation.code_fingerprint(tmp_path)
    assert len(first) == 16 and first == ablation.code_fingerprint(tmp_path)
    (tmp_path / "benchmarks" / "ablation.py").write_text("other arms\n")
    (tmp_path / "README.md").write_text("other words\n")
    (tmp_path / "xkd" / "__pycache__").mkdir()
    (tmp_path / "xkd" / "__pycache__" / "losses.cpython-311.pyc").write_bytes(b"\0")
    assert ablation.code_fingerprint(tmp_path) == first
    for name, text in (("xkd/losses.py", "a = 2\n"), ("configs/tiny.yaml", "x: 2\n")):
        before = ablation.code_fingerprint(tmp_path)
        (tmp_path / name).write_text(text)
        assert ablation.code_fingerprint(tmp_path) != before
    renamed = ablation.code_fingerprint(tmp_path)
    (tmp_path / "launch" / "pretrain.py").rename(tmp_path / "launch" / "train.py")  # same bytes, other file
    assert ablation.code_fingerprint(tmp_path) != renamed
    assert ablation.code_record(tmp_path)["git_commit"] is None  # not a git checkout
    assert ablation.code_record()["fingerprint"] == ablation.code_fingerprint()


def test_a_run_directory_is_reused_only_by_the_code_it_was_made_with(tmp_path, capsys):
    here = {"fingerprint": "aaaa", "git_commit": "c1", "torch": "2"}
    run_dir = tmp_path / "runs" / "xkd" / "seed0"
    assert ablation.check_run_code(run_dir, here) == here  # a new run directory records this checkout's code
    assert json.loads((run_dir / "code.json").read_text()) == here
    assert not list(run_dir.glob("*.partial"))
    (run_dir / "pretrain.log").write_text("$ deepspeed ...\n")
    assert ablation.check_run_code(run_dir, here) == here
    other = {"fingerprint": "bbbb", "git_commit": "c2+dirty"}
    with pytest.raises(SystemExit, match=r"seed0 was made with code aaaa \(commit c1\), this checkout is code bbbb "
                                         r"\(commit c2\+dirty\)\. The same seed .* --allow-other-code"):
        ablation.check_run_code(run_dir, other)
    assert ablation.check_run_code(run_dir, other, allow_other_code=True) == here
    assert "reused (--allow-other-code)" in capsys.readouterr().out
    assert json.loads((run_dir / "code.json").read_text()) == here  # the record is never rewritten
    (run_dir / "code.json").unlink()  # a run made before runs recorded their code
    with pytest.raises(SystemExit, match=r"made with code that was not recorded \(no code\.json\)"):
        ablation.check_run_code(run_dir, here)
    assert ablation.check_run_code(run_dir, here, allow_other_code=True)["fingerprint"] is None
    for damaged in ("{\"fingerprint\": ", "[1, 2]", "{}"):  # cut short, not a record, no fingerprint
        (run_dir / "code.json").write_text(damaged)
        with pytest.raises(SystemExit, match=r"code\.json: expected the JSON record .* got unreadable content"):
            ablation.check_run_code(run_dir, here, allow_other_code=True)


def test_the_table_names_runs_made_with_other_code():
    rows = {"xkd": [{"seed": 0, "code": "aaaa"}, {"seed": 1, "code": "aaaa"}], "ae": [{"seed": 2, "code": "aaaa"}]}
    assert ablation.other_code_note(rows, "aaaa") == "\nEvery run: code aaaa.\n"
    rows["ae"].append({"seed": 0, "code": None})
    rows["xkd"][1]["code"] = "bbbb"
    note = ablation.other_code_note(rows, "aaaa")
    assert note.startswith("\n**Not one experiment**: made with other code than aaaa: ")
    assert "`ae+kd+da` (XKD) seed 1 (bbbb); `ae` seed 0 (code not recorded)." in note
    assert "seed 2" not in note and "XKD) seed 0" not in note
