"""--transfer (metakd_cli.data.transfer): the user's unlabelled texts from a table with a domain column or a folder
with one file per domain; an unknown domain is one line naming it; rows equal to dev or test texts are dropped and
what is left out is counted; a distillation learns them from the teacher's soft labels only."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from metakd_cli.core.errors import UserError
from metakd_cli.data.transfer import read_transfer
from metakd_cli.data.dataset import reload_dataset

SEEN = {"train": {"a training text"}, "dev": {"a dev text"}, "test": {"a test text"}}
DOMAINS = ["books", "kitchen"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_table_with_a_domain_column_labels_ignored(tmp_path):
    path = _jsonl(tmp_path / "u.jsonl", [
        {"text": "a new kitchen text", "domain": "kitchen", "label": "pos"},
        {"text": "a new book text", "domain": "books"},
        {"text": "  ", "domain": "books"},
        {"text": "a dev text", "domain": "books"},
        {"text": "a test text", "domain": "kitchen"},
        {"text": "a training text", "domain": "books"},
        {"text": "a new book text", "domain": "books"},
    ])
    read = read_transfer([str(path)], DOMAINS, SEEN)
    assert [(r.text, r.domain, r.label) for r in read.rows] == [("a new kitchen text", "kitchen", ""),
                                                                ("a new book text", "books", "")]
    assert read.left_out == {"a row without text": 1, "the same text as a dev or test row (dropped: no leakage)": 2,
                             "the same text as a training row": 1, "a repeated text": 1}
    assert read.summary()["by_domain"] == {"kitchen": 1, "books": 1}


def test_a_folder_with_one_file_per_domain(tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    (folder / "books.txt").write_text("first book\n\nsecond book\n", encoding="utf-8")
    (folder / "kitchen.txt").write_text("", encoding="utf-8")
    read = read_transfer([str(folder)], DOMAINS, SEEN)
    assert [(r.text, r.domain) for r in read.rows] == [("first book", "books"), ("second book", "books")]
    assert read.left_out == {"an empty file": 1}
    assert read.rows[1].where.endswith("books.txt:2")
    only = read_transfer([str(folder)], DOMAINS, SEEN, only="kitchen")
    assert only.rows == [] and only.left_out["another domain than --domain"] == 2


def test_an_unknown_domain_is_one_line_naming_it(tmp_path):
    path = _jsonl(tmp_path / "u.jsonl", [{"text": "x", "domain": "books"}, {"text": "y", "domain": "garden"}])
    with pytest.raises(UserError, match=r"u.jsonl:2: domain 'garden' is not one of the run's \(books, kitchen\)"):
        read_transfer([str(path)], DOMAINS, SEEN)
    with pytest.raises(UserError, match="no column 'domain'"):
        read_transfer([str(_jsonl(tmp_path / "v.jsonl", [{"text": "x"}]))], DOMAINS, SEEN)
    with pytest.raises(UserError, match="one file needs a domain column"):
        (tmp_path / "w.txt").write_text("x\n")
        read_transfer([str(tmp_path / "w.txt")], DOMAINS, SEEN)
    with pytest.raises(UserError, match="no such file or folder"):
        read_transfer([str(tmp_path / "missing")], DOMAINS, SEEN)


def test_a_second_text_must_match_the_runs_rows(tmp_path):
    single = _jsonl(tmp_path / "s.jsonl", [{"text": "x", "domain": "books"},
                                           {"text": "y", "text_pair": "z", "domain": "books"}])
    with pytest.raises(UserError, match=r"s.jsonl:2: a second text \('text_pair'\), but the run's rows are single"):
        read_transfer([str(single)], DOMAINS, SEEN, pairs=False)
    with pytest.raises(UserError, match=r"s.jsonl:1: no second text \('text_pair'\): the run's rows are text pairs"):
        read_transfer([str(single)], DOMAINS, SEEN, pairs=True)
    both = _jsonl(tmp_path / "p.jsonl", [{"text": "y", "text_pair": "z", "domain": "books"}])
    assert [(r.text, r.text_pair) for r in read_transfer([str(both)], DOMAINS, SEEN, pairs=True).rows] == [("y", "z")]


@pytest.fixture
def run(fitted_toy_run):
    return fitted_toy_run


def test_a_distillation_learns_the_users_texts_from_the_teacher(run, tmp_path, monkeypatch):
    import metakd_cli.steps.distill as distill_module
    from metakd_cli.core.config import DistillConfig

    _, dataset = reload_dataset(run)
    domain = dataset.domains[0]
    dev_text = dataset.dev[0].text
    path = _jsonl(tmp_path / "u.jsonl", [{"text": f"an unlabelled text number {i}", "domain": domain}
                                         for i in range(10)] + [{"text": dev_text, "domain": dataset.dev[0].domain}])
    labelled = []
    real = distill_module.prediction_loss
    monkeypatch.setattr(distill_module, "prediction_loss", lambda *a: labelled.append(a[5]) or real(*a))
    lines = []
    result = distill_module.distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5,
                                                  gold_weight=1.0, transfer=[str(path)]),
                                    run, log=lines.append, warn=lambda _: None)
    transfer = result.metrics["transfer"]
    assert (transfer["transfer_rows"], transfer["augment_rows"]) == (10, 0)
    assert transfer["by_domain_kind"] == {domain: {"transfer": 10}}
    assert transfer["transfer"]["left_out"] == {"the same text as a dev or test row (dropped: no leakage)": 1}
    train_rows = sum(result.metrics["train_rows"].values())
    assert sum(len(b) for b in labelled) == train_rows + 10
    assert sum(float(b.sum()) for b in labelled) == train_rows  # no gold term on the user's texts
    assert any(line.startswith("--transfer: 10 texts kept; left out: 1 the same text") for line in lines)
    card = (run.student / "README.md").read_text()
    assert "10 unlabelled texts (`--transfer`)" in card
    assert not transfer["reused"]
    again = distill_module.distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=6, augment=1,
                                                 transfer=[str(path)]), run, log=lines.append, warn=lambda _: None)
    # another seed, derived rows beside: the user's texts are not labelled again, the new derived rows are
    assert any(line.startswith("the teacher's labels of 10 of your texts from") for line in lines)
    assert not again.metrics["transfer"]["reused"] and len(again.metrics["transfer"]["logits"]) == 2


def test_the_command_takes_repeated_transfer_paths(run, tmp_path):
    from metakd_cli.cli import cli

    _, dataset = reload_dataset(run)
    first = _jsonl(tmp_path / "a.jsonl", [{"text": "one more text", "domain": dataset.domains[0]}])
    second = _jsonl(tmp_path / "b.jsonl", [{"text": "and another", "domain": dataset.domains[-1]}])
    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "distill", "--method", "kd", "--epochs", "1",
                                      "--batch-size", "8", "--transfer", str(first), "--transfer", str(second)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run.metrics / "distill.json").read_text())
    assert metrics["transfer"]["transfer_rows"] == 2 and metrics["config"]["transfer"] == [str(first), str(second)]
    bad = _jsonl(tmp_path / "c.jsonl", [{"text": "x", "domain": "nowhere"}])
    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "distill", "--method", "kd", "--transfer", str(bad)])
    assert result.exit_code == 2 and "domain 'nowhere' is not one of the run's" in result.output


def test_a_bad_transfer_row_is_refused_before_any_teacher_pass(run, tmp_path, monkeypatch):
    import metakd_cli.steps.distill as distill_module
    from metakd_cli.core.config import DistillConfig

    def no_pass(*_args):
        raise AssertionError("the teacher ran before the transfer rows were checked")

    monkeypatch.setattr(distill_module, "_cache_teacher", no_pass)
    bad = _jsonl(tmp_path / "c.jsonl", [{"text": "x", "domain": "nowhere"}])
    with pytest.raises(UserError, match="domain 'nowhere'"):
        distill_module.distill(DistillConfig(method="kd", transfer=[str(bad)]), run, log=lambda _: None,
                               warn=lambda _: None)


def test_training_texts_a_fraction_leaves_out_are_the_users_unlabelled_text(run, tmp_path):
    """--train-fraction keeps some labels; the training texts it leaves out may come back through --transfer (the
    realistic case: labels for a few rows, the rest as unlabelled text), while a kept training row's text is a
    repeat."""
    import metakd_cli.steps.distill as distill_module
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.data.dataset import fraction_indices

    _, dataset = reload_dataset(run)
    kept = set(fraction_indices(dataset.train, 0.5, dataset.split_seed))
    inside = [ex for i, ex in enumerate(dataset.train) if i in kept]
    outside = [ex for i, ex in enumerate(dataset.train) if i not in kept]
    assert inside and outside
    path = _jsonl(tmp_path / "u.jsonl", [{"text": ex.text, "domain": ex.domain} for ex in outside + inside[:1]])
    lines = []
    result = distill_module.distill(DistillConfig(method="kd", epochs=1, batch_size=8, train_fraction=0.5,
                                                  transfer=[str(path)]), run, log=lines.append, warn=lambda _: None)
    transfer = result.metrics["transfer"]
    assert transfer["transfer_rows"] == len({ex.text for ex in outside})
    assert transfer["transfer"]["left_out"].get("the same text as a training row") == 1


def test_metakd_data_shows_what_transfer_would_add(tmp_path):
    from conftest import write_toy_dataset
    from metakd_cli.cli import cli

    data = write_toy_dataset(tmp_path / "data")
    first = json.loads(data.read_text().splitlines()[0])
    path = _jsonl(tmp_path / "u.jsonl", [{"text": "an unlabelled kitchen text", "domain": "kitchen"},
                                         {"text": "another", "domain": "kitchen"},
                                         {"text": first["text"], "domain": first["domain"]}])
    result = CliRunner().invoke(cli, ["data", str(data), "--transfer", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transfer"]["by_domain"] == {"kitchen": 2} and sum(summary["transfer"]["left_out"].values()) == 1
    table = CliRunner().invoke(cli, ["data", str(data), "--transfer", str(path)], terminal_width=200)
    assert table.exit_code == 0 and "transfer" in table.stdout and "--transfer left out 1" in table.stdout
    bad = _jsonl(tmp_path / "b.jsonl", [{"text": "x", "domain": "garden"}])
    result = CliRunner().invoke(cli, ["data", str(data), "--transfer", str(bad)])
    assert result.exit_code == 2 and "domain 'garden' is not one of the run's" in result.output
    assert "Traceback" not in result.output
