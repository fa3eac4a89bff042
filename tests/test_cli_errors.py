"""A bad make variable is one line naming it (SIZE=), not argparse's usage block naming only the flag."""

from __future__ import annotations

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
