"""A bad make variable is one line naming it (SIZE=), not argparse's usage block naming only the flag."""

from __future__ import annotations

import re

import pytest

from extract.__main__ import main as extract_main
from heads.__main__ import main as heads_main


@pytest.mark.parametrize("main,argv,said", [
    (extract_main, ["--data", "d", "--size", "abc"], "error: SIZE= (--size): invalid int value: 'abc'."),
    (extract_main, ["--data", "d", "--pooling", "flatten"], "error: POOLING= (--pooling): invalid choice: 'flatten'"),
    (extract_main, ["--size", "71"], "error: the following arguments are required: DATA= (--data)."),
    (heads_main, ["train", "--epochs", "ten"], "error: EPOCHS= (--epochs): invalid int value: 'ten'."),
    (heads_main, ["train", "--max-pixels", "9"], "error: unrecognized arguments: --max-pixels 9."),
])
def test_a_bad_variable_is_one_line_naming_it(capsys, main, argv, said):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "`make help` lists the variables" in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


@pytest.mark.parametrize("argv,said", [
    (["--head-args", "C=0.5", "--c", "2"], "error: HEAD_ARGS sets C=0.5 and C=2 sets it too; pass it once"),
    (["--head", "dense", "--head-args", "epochs=5", "--epochs", "7"], "HEAD_ARGS sets epochs=5 and EPOCHS=7"),
])
def test_a_head_argument_set_twice_differently_is_refused(capsys, tmp_path, argv, said):
    """`HEAD_ARGS='C=0.5' C=2` trained with C=0.5 and said nothing."""
    with pytest.raises(SystemExit) as exit_:
        heads_main(["train", "--features", str(tmp_path / "never-read.h5"), *argv])
    assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("target,variables,said", [
    ("compare-heads", ["HEAD_ARGS=C=0.5"], "compare-heads does not take HEAD_ARGS="),
    ("compare-heads", ["EPOCHS=5"], "compare-heads does not take EPOCHS="),
    ("compare-backbones", ["DATA=d", "PRECISION=bfloat16"], "compare-backbones does not take PRECISION="),
    ("compare-backbones", ["DATA=d", "AUGMENT=epiuse", "ROUNDS=2"], "compare-backbones does not take AUGMENT="),
    ("compare-backbones", ["DATA=d", "FLUSH_ROWS=64"], "compare-backbones does not take FLUSH_ROWS="),
    # HEADS= ran HEAD=logreg alone on each backbone; HEAD=dense on compare-heads trained every head
    ("compare-backbones", ["DATA=d", "HEADS=logreg,dense"], "compare-backbones does not take HEADS=: it trains one"),
    ("compare-heads", ["HEAD=dense"], "compare-heads does not take HEAD=: it trains the heads in HEADS= (default: all "
                                      "but one that would take hours); name dense there"),
    # BACKBONE= for BACKBONES=: the Makefile always sets BACKBONE, so only one given on the command line stops it.
    ("compare-backbones", ["DATA=d", "BACKBONE=resnet50"], "compare-backbones does not take BACKBONE=: it runs every "
                                                           "backbone in BACKBONES=xception,inceptionv3,resnet50; name "
                                                           "resnet50 there"),
])
def test_make_refuses_a_variable_the_target_would_drop(target, variables, said):
    """`make -n` (nothing runs) expands the recipe, where the refusal stops make."""
    import subprocess
    from pathlib import Path

    out = subprocess.run(["make", "-n", target, *variables], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and said in out.stderr


def test_make_refuses_a_misspelled_variable_and_takes_every_documented_one():
    """`make extract SIZ=100` extracted at the default size and `HEAD_ARG=` trained with default arguments, silently."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def make(*variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-n", "extract", "DATA=d", *variables], cwd=repo, capture_output=True,
                              text=True, timeout=60)

    out = make("SIZ=100")
    assert out.returncode == 2 and "python" not in out.stdout  # (under `make test` it says "Entering directory")
    assert "*** unknown variable SIZ=100 (did you mean SIZE=?): make would ignore it. The variables are: " in out.stderr
    out = make("HEAD_ARG=C=0.1", "cachedir=x")
    assert "unknown variables HEAD_ARG=C=0.1 (did you mean HEAD_ARGS=?) cachedir=x: make would ignore them" in out.stderr
    # Every variable the README's tables and `make help` name is known
    readme = (repo / "README.md").read_text()
    helped = subprocess.run(["make", "help"], cwd=repo, capture_output=True, text=True, timeout=60).stdout
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M))
    documented |= set(re.findall(r"\b([A-Z][A-Z_]*)\b", helped.split("Variables:")[1])) - {"README", "See"}
    assert {"WORKERS", "HEAD_ARGS", "C", "N", "ALL", "FORMATS"} <= documented
    out = make("SIZE=100", *(f"{v}=1" for v in sorted(documented - {"DATA", "SIZE"})))
    assert out.returncode == 0 and '--size "100"' in out.stdout, out.stderr


@pytest.mark.parametrize("target", ["extract", "preview-augment", "train-head", "compare-heads", "compare-backbones",
                                    "verify", "predict", "export"])
def test_make_echoes_the_command_on_one_line_without_the_options_not_given(target):
    """make echoed `--features "x.h5"  \\`, then lines of a lone `\\` where options were not given."""
    import subprocess
    from pathlib import Path

    out = subprocess.run(["make", "-n", target, "DATA=d", "FEATURES=f.h5", "RUN=r", "OUT=o"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    command = [line for line in out.stdout.splitlines() if "/python -m " in line]
    assert out.returncode == 0 and len(command) == 1, out.stdout + out.stderr
    assert "\\" not in out.stdout and "  " not in command[0], command[0]
    assert re.search(r'--(out "o"|run "r"|features "f\.h5")', command[0]), command[0]  # the options given came


@pytest.mark.parametrize("target", ["extract", "train-head", "compare-heads", "compare-backbones"])
def test_cache_dir_reaches_every_target_that_reads_or_writes_default_caches(target):
    """`make help` lists CACHE_DIR, but only compare-backbones passed it: `make extract CACHE_DIR=x` wrote to
    features_cache/, and `make train-head` then could not find compare-backbones' caches in x."""
    import subprocess
    from pathlib import Path

    out = subprocess.run(["make", "-n", target, "DATA=d", "CACHE_DIR=/elsewhere/caches"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '--cache-dir "/elsewhere/caches"' in out.stdout


def test_an_os_error_is_one_line_and_ctrl_c_says_how_to_resume(capsys, monkeypatch, tmp_path):
    """OUT= a folder ended in a 30-line IsADirectoryError traceback; Ctrl-C printed one word."""
    from extract import pipeline
    from extract.cli_util import run_cli

    def write_into_a_folder():
        open(tmp_path, "w")  # noqa: SIM115

    with pytest.raises(SystemExit) as exit_:
        run_cli(write_into_a_folder)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: [Errno 21] Is a directory") and len(err.splitlines()) == 1

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "extract_features", interrupt)
    with pytest.raises(SystemExit) as exit_:
        extract_main(["--data", str(tmp_path)])
    assert exit_.value.code == 130
    assert capsys.readouterr().err == ("interrupted: the parts flushed so far (every FLUSH_ROWS rows) are kept; "
                                       "run the same command again to resume\n")


@pytest.mark.parametrize("argv,said", [
    (["compare-backbones", "--data", "d", "--backbones", "xception,nosuch,alsonot", "--weights", "none"],
     "error: BACKBONES=xception,nosuch,alsonot names unknown backbones nosuch, alsonot; choose from: convnexttiny, "),
    (["compare", "--features", "never-read.h5", "--heads", "logreg,nosuch"],
     "error: HEADS=logreg,nosuch names an unknown head nosuch; choose from: dense, knn, linear-svm, logreg, ridge, "
     "sgd."),
    (["compare", "--heads", "logreg,nosuch"],  # no FEATURES= and no cache: HEADS= is still what is said
     "error: HEADS=logreg,nosuch names an unknown head nosuch; choose from: dense, knn, linear-svm, logreg, ridge, "
     "sgd."),
])
def test_an_unknown_name_in_a_list_names_the_list_variable(capsys, tmp_path, monkeypatch, argv, said):
    """`make compare-backbones BACKBONES=xception,nosuch` said "unknown BACKBONE='nosuch'" (the single-run
    variable, which that target refuses); likewise HEADS= and HEAD=. Both stop before any file is read."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        heads_main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(said), err
    variable = said.split()[1].split("=")[0]
    assert f"Fix {variable}= (comma-separated names)" in err
    assert "BACKBONE=" not in err.replace("BACKBONES=", "") and "HEAD=" not in err.replace("HEADS=", "")
    assert list(tmp_path.iterdir()) == []
