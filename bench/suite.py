"""A bench suite declared as data (bench/suites/<name>.yaml) and what one driver does with it: its systems, each
a set of recipe overrides and the `metakd run` steps it adds to a copy of the folder it starts from, run in order
and skipped when finished; the results table of finished folders, keeping the figures of folders that are gone;
paired tests of two systems on the same test rows; targets with their pass / fail / not measured status.

A suite file holds: ``what`` (one line), ``recipe``, ``runs`` (its folder under bench/runs; its name by default),
``results`` (its file under bench/results), ``systems`` (each: ``what``, ``sets``, ``steps``, ``start``, ``pin``,
``folder``, ``reads``, or ``same_as`` another suite's system of that name), ``default`` (what `run` runs), the
``seeds`` / ``domains`` / ``held_out`` / ``fractions`` its runs range over, ``borrow`` (a finished folder of another
suite's same system), ``tests`` (pairs A, B; ``test_models``, ``best_of``, ``best_against``), ``targets``, ``setup``
and ``document`` (the results file's sections, "$name" filled), ``mpnet`` (the MPNet path: a suite inside),
``report`` (its section of docs/results.md, bench/report.py; ``report_files``: several results files), a timing
suite's ``options``, ``quick`` and ``columns`` (bench/timing.py), mpnet's ``speed`` (bench/mpnet.py), and ``hooks``:
"module:function" for what must be code (before, values, rows, sections, figures, table, run, commands).

A system's ``folder`` and ``sets`` may hold placeholders: {seed}, {fraction}, {held}, {domain} and {other} (the
domains but {held}) make one run per value of the suite's ``seeds``, ``fractions``, ``held_out`` and ``domains``;
{runs} is the suite's run folder; any other name is a value of the suite's ``values`` hook (scarce's matched
epochs). A system starts from the run of its ``start`` with the same values, but those its ``pin`` fixes."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.common import DOMAINS, PAPER, RESULTS, ROOT, RUNS, Scored, data_path, done, metakd_run, recipe
from bench.common import scored_rows, selection, shown, start_from
from bench.rows import READERS, read_distilled_only
from bench.stats import compare
from metakd_cli.core.run_dir import atomic_write_json, atomic_write_text, read_json_object
from metakd_cli.steps.pipeline import STEPS

SUITES = Path(__file__).resolve().parent / "suites"
NOT_MEASURED = "not measured"
RANGES = {"seed": "seeds", "fraction": "fractions", "held": "held_out", "domain": "domains", "other": "domains"}
PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")
SUITE_KEYS = {"what", "recipe", "runs", "results", "seeds", "fractions", "held_out", "domains", "systems", "default",
              "aliases", "borrow", "tests", "test_models", "best_of", "best_against", "targets", "setup", "paper",
              "document", "mpnet", "hooks", "options", "quick", "columns", "report", "report_files", "speed"}
SYSTEM_KEYS = {"what", "sets", "steps", "start", "pin", "folder", "reads", "same_as"}
HOOKS = {"before", "values", "rows", "sections", "figures", "table", "run", "commands"}


class SuiteError(Exception):
    """A suite file that cannot be used: one line naming the file, the key and what is wrong."""


@dataclass(frozen=True)
class System:
    what: str
    sets: tuple[str, ...] = ()  # --set overrides on the recipe
    steps: tuple[str, ...] = ()  # the steps it adds to those of the folder it starts from
    start: str | None = None  # the system whose finished folder it starts as a copy of
    pin: tuple[tuple[str, object], ...] = ()  # placeholders of its start fixed, not taken from its own run
    folder: str | None = None  # under the suite's runs; its name by default
    reads: str | None = None  # how the table reads its metrics (bench.rows.READERS); teacher / distilled by default


@dataclass
class Suite:
    name: str
    file: Path
    spec: dict
    recipe: Path | None
    runs: Path
    out: Path
    systems: dict[str, System]
    values: dict[str, list] = field(default_factory=dict)  # seeds, fractions, held_out, domains
    mpnet: Suite | None = None  # the MPNet path: systems of the MPNet recipe reported beside this suite's
    home: Path | None = None  # where its runs/ and results/ are, when not bench/
    files: dict[Path, str] = field(default_factory=dict)  # more files its table writes beside its results

    def hook(self, name: str):
        """The function a ``hooks`` entry names ("module:function"), or None."""
        ref = (self.spec.get("hooks") or {}).get(name)
        return None if ref is None else resolve(ref)

    # ------------------------------------------------------------------ a system's runs

    def variables(self, system: str) -> list[str]:
        """The placeholders a system's runs range over (those of its start too, but the pinned)."""
        s = self.systems[system]
        names = {m[1] for text in (system, s.folder or "", *s.sets) for m in PLACEHOLDER.finditer(text)}
        if s.start:
            names |= set(self.variables(s.start)) - dict(s.pin).keys()
        return [name for name in RANGES if name in names]

    def bindings(self, system: str) -> list[dict]:
        out = [{}]
        for name in self.variables(system):
            out = [{**b, name: v} for b in out for v in self.values[RANGES[name]]
                   if not (name == "other" and v == b.get("held"))]
        return out

    def found(self, system: str) -> list[dict]:
        """The values of the system's run folders that exist, any seed (not only the suite's): for a table."""
        template, regex, at, seen = self.systems[system].folder or system, "", 0, set()
        for match in PLACEHOLDER.finditer(template):
            group = r"\d+" if match[1] == "seed" else "|".join(map(re.escape, map(str, self.values.get(
                RANGES.get(match[1], ""), []))))
            part = f"(?P={match[1]})" if match[1] in seen else f"(?P<{match[1]}>{group})"
            regex, at = regex + re.escape(template[at:match.start()]) + part, match.end()
            seen.add(match[1])
        regex += re.escape(template[at:])
        matches = (re.fullmatch(regex, path.relative_to(self.runs).as_posix())
                   for path in sorted(self.runs.glob(PLACEHOLDER.sub("*", template))))
        return [{k: int(v) if k == "seed" else v for k, v in m.groupdict().items()} for m in matches if m]

    def fill(self, text: str, binding: dict, strict: bool = True) -> str:
        """``text`` with its placeholders filled; ``strict``: a placeholder without a value is an error, else kept."""
        values = {**binding, "runs": str(self.runs.resolve())}

        def one(match: re.Match) -> str:
            if match[1] not in values and strict:
                values.update(self.hook("values")(self, binding) if self.hook("values") else {})
            if match[1] not in values:
                if not strict:
                    return match[0]
                raise SuiteError(f"{self.file}: {text}: no value for {{{match[1]}}}")
            return format(values[match[1]], match[2] or "")
        return PLACEHOLDER.sub(one, text)

    def folder(self, system: str, binding: dict | None = None) -> Path:
        path = self.fill(self.systems[system].folder or system, binding or {})
        return self.runs / (self.spec.get("aliases") or {}).get(path, path)

    def start_of(self, system: str, binding: dict) -> tuple[str, dict] | None:
        s = self.systems[system]
        if s.start is None:
            return None
        pinned = dict(s.pin)
        return s.start, {name: pinned.get(name, binding.get(name)) for name in self.variables(s.start)}

    def sets_of(self, system: str, binding: dict | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        """Every --set a system's run gets: those of the runs it starts from for the steps it copies (they are
        finished only with their settings), its own, then the caller's (the command line's, a mode's)."""
        binding = binding or {}
        start, inherited = self.start_of(system, binding), []
        if start:
            copied = {"data", *self.chain(start[0], built=True).split(",")}
            inherited = [item for item in self.sets_of(*start) if item.split(".")[0] in copied]
        return [*inherited, *(self.fill(item, binding) for item in self.systems[system].sets), *extra]

    def chain(self, system: str, built: bool = False) -> str:
        """The steps a system's folder holds, in `metakd run` order: its own and those of the folders it was copied
        from (a student: fit,distill,export,eval); ``built``: those that make models, without eval."""
        s = self.systems[system]
        held = {*s.steps, *(self.chain(s.start, built=True).split(",") if s.start else ())}
        return ",".join(step for step in STEPS if step in held and not (built and step == "eval"))

    def finished(self, system: str, binding: dict | None = None, extra: tuple[str, ...] = (),
                 steps: str | None = None, run_dir: Path | None = None) -> dict[str, dict] | None:
        """{step: metrics/<step>.json, eval: its record of this system's selection} when the folder is done with
        this system's settings (``steps``: default its chain) and its eval written after them; None otherwise."""
        binding = binding or {}
        run_dir, steps = run_dir or self.folder(system, binding), steps or self.chain(system)
        config = recipe(self.sets_of(system, binding, extra), self.recipe)
        key = selection(config) if "eval" in steps.split(",") else None
        if not done(run_dir, config, steps, key):
            return None
        metrics = {step: read_json_object(run_dir / "metrics" / f"{step}.json") for step in steps.split(",")}
        if key is not None:
            metrics["eval"] = metrics["eval"]["selections"][key]
        return metrics

    def scored(self, system: str, model: str, binding: dict | None = None, extra: tuple[str, ...] = ()
               ) -> Scored | None:
        """``model``'s test rows in the system's folder (bench.common.scored_rows)."""
        binding = binding or {}
        return scored_rows(self.folder(system, binding), recipe(self.sets_of(system, binding, extra), self.recipe),
                           model)

    def anything_finished(self, extra: tuple[str, ...] = ()) -> bool:
        return any(self.finished(s, b, extra) for s in self.systems for b in self.bindings(s)) or bool(
            self.mpnet and self.mpnet.anything_finished(extra))

    # ------------------------------------------------------------------ running

    def plan(self, systems: list[str]) -> list[tuple[str, dict]]:
        """The runs of ``systems``: a seed's (or a fraction's) runs of every system before the next one's, each
        after the run it starts from."""
        def position(run: tuple[str, dict]) -> tuple:
            outer = [self.values[RANGES[n]].index(run[1][n]) if n in run[1] else -1 for n in ("seed", "fraction")]
            return *outer, systems.index(run[0])
        ordered: list[tuple[str, dict]] = []

        def add(system: str, binding: dict) -> None:
            if start := self.start_of(system, binding):
                add(*start)
            if (system, binding) not in ordered:
                ordered.append((system, binding))
        for system, binding in sorted(((s, b) for s in systems for b in self.bindings(s)), key=position):
            add(system, binding)
        return ordered

    def run(self, systems: list[str], extra: tuple[str, ...] = (), after=lambda: None, dry_run: bool = False,
            built: bool = False) -> None:
        """Each run of ``systems`` not finished yet (bench.common.done), in order, in a copy of the folder it starts
        from; ``after`` each one that ran. ``built``: their steps that make models, without eval."""
        if self.hook("before") and not dry_run:
            self.hook("before")(self)
        for ours, theirs in (self.spec.get("borrow") or {}).items():  # the same system in another suite's folder
            other, system = load(theirs.split("/")[0], self.home), theirs.split("/")[1]
            if other.sets_of(system) != self.sets_of(ours):
                raise SuiteError(f"{self.file}: borrow.{ours}: {theirs} has other settings")
            if self.finished(ours, {}, extra) is None and other.finished(system, {}, extra) is not None:
                start_from(other.folder(system), self.folder(ours), dry_run)
        for system, binding in self.plan(systems):
            run_dir, sets = self.folder(system, binding), self.sets_of(system, binding, extra)
            steps = self.chain(system, built)
            config = recipe(sets, self.recipe)
            if done(run_dir, config, steps, selection(config) if "eval" in steps else None):
                continue
            if start := self.start_of(system, binding):
                start_from(self.folder(*start), run_dir, dry_run)
            metakd_run(run_dir, sets, steps, self.recipe, dry_run)
            if not dry_run:
                after()

    def data_missing(self, extra: tuple[str, ...] = ()) -> str | None:
        """Why the suite cannot run here (its recipe's data is not on this machine), or None."""
        path = data_path(recipe(list(extra), self.recipe)) if self.recipe else None
        return None if path is None or path.exists() else f"skipped: {path} not present (the data is not here)"


# ---------------------------------------------------------------------- loading a suite file


def resolve(ref: str):
    """The function a hook names: "module:function" (bench.peers:rows)."""
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


def load(name: str, home: Path | None = None) -> Suite:
    """bench/suites/<name>.yaml as a Suite; ``home``: its runs/ and results/ there instead of bench/ (a test's)."""
    file = SUITES / f"{name}.yaml"
    try:
        spec = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError:
        raise SuiteError(f"{file}: no such suite (the suites: {', '.join(names())})") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{file}: not YAML: {' '.join(str(exc).split())}") from None
    runs, results = (home / "runs", home / "results") if home else (RUNS, RESULTS)
    if not isinstance(spec, dict):
        raise SuiteError(f"{file}: the file: expected a mapping")
    _checker(file, "")(isinstance(spec.get("results", ""), str), "results", "expected text")
    suite = _suite(name, file, spec, "", runs, results / spec.get("results", f"{name}.json"))
    suite.home = home
    return suite


def names() -> list[str]:
    return sorted(path.stem for path in SUITES.glob("*.yaml"))


def _checker(file: Path, where: str):
    """need(ok, key, wrong): unless ``ok``, a SuiteError naming the file, the key (``where`` + key), what is wrong."""
    def need(ok: object, key: str, wrong: str) -> None:
        if not ok:
            raise SuiteError(f"{file}: {where}{key}: {wrong}")
    return need


def _suite(name: str, file: Path, spec: object, where: str, runs: Path, out: Path) -> Suite:
    if not isinstance(spec, dict):
        raise SuiteError(f"{file}: {where.rstrip('.')}: expected a mapping")
    need, unknown = _checker(file, where), sorted(set(spec) - SUITE_KEYS)
    need(not unknown, unknown[0] if unknown else "", f"unknown key (the keys: {', '.join(sorted(SUITE_KEYS))})")
    need(where or isinstance(spec.get("what"), str), "what", "missing: one line saying what the suite measures")
    unknown = [key for key in spec.get("hooks") or {} if key not in HOOKS]
    need(not unknown, f"hooks.{unknown[0]}" if unknown else "", f"unknown hook (the hooks: {', '.join(sorted(HOOKS))})")
    for key in ("recipe", "runs"):
        need(isinstance(spec.get(key, ""), str), key, "expected text")
    need((path := spec.get("recipe")) is None or (ROOT / path).is_file(), "recipe", f"{path}: no such file")
    for key in ("seeds", "fractions", "held_out", "domains"):
        need(isinstance(spec.get(key) or [], list), key, "expected a list")
    need(isinstance(systems := spec.get("systems") or {}, dict), "systems", "expected a mapping of system names")
    suite = Suite(name, file, spec, ROOT / path if path else None, runs / spec.get("runs", name), out,
                  {s: _system(file, f"{where}systems.{s}", body, s) for s, body in systems.items()},
                  {key: spec.get(key) or [] for key in ("seeds", "fractions", "held_out", "domains")})
    need(not suite.systems or suite.recipe, "recipe", "missing: the recipe its systems override")
    for system, body in suite.systems.items():
        need(body.start in (None, *suite.systems), f"systems.{system}.start",
             f"{body.start} is not a system of the suite")
    for key in ("default", "best_of"):
        wrong = [s for s in spec.get(key) or [] if s not in suite.systems and spec.get(key) != "students"]
        need(not wrong, key, f"{wrong[0] if wrong else ''} is not a system of the suite")
    for pair in spec.get("tests") or []:
        need(isinstance(pair, list) and len(pair) == 2 and set(pair) <= set(suite.systems), "tests",
             f"{pair}: expected [A, B], two systems of the suite")
    for number, row in enumerate(spec.get("targets") or []):
        need(isinstance(row, dict) and "target" in row and {"value", "test"} & set(row) and {"at_least", "at_most"}
             & set(row), f"targets[{number}]", "expected target, value or test, at_least or at_most")
    if "mpnet" in spec:
        suite.mpnet = _suite(name, file, spec["mpnet"], "mpnet.", runs, out)
    return suite


def _system(file: Path, where: str, body: object, name: str) -> System:
    need = _checker(file, where)
    need(isinstance(body, dict), "", "expected a mapping with what, sets, steps, start")
    if "same_as" in body:  # the same system as another suite declares it (the same folder, not a second fit)
        other = load(body["same_as"])
        found = other.systems.get(name) or (other.mpnet.systems.get(name) if other.mpnet else None)
        need(found, ".same_as", f"{body['same_as']} has no system {name}")
        return found
    unknown = sorted(set(body) - SYSTEM_KEYS)
    need(not unknown, f".{unknown[0] if unknown else ''}", f"unknown key (the keys: {', '.join(sorted(SYSTEM_KEYS))})")
    need(isinstance(body.get("what"), str), ".what", "missing: one line saying what the system is")
    sets = [item for part in body.get("sets") or [] for item in (part if isinstance(part, list) else [part])]
    need(all(isinstance(item, str) and "=" in item and "." in item.split("=")[0] for item in sets), ".sets",
         "expected SECTION.KEY=VALUE items, as `metakd run --set` takes")
    steps = body.get("steps") or []
    need(steps and set(steps) <= set(STEPS), ".steps", f"expected some of {', '.join(STEPS)}")
    need(body.get("reads") in (None, *READERS), ".reads",
         f"{body.get('reads')}: not a reader (the readers: {', '.join(READERS)})")
    return System(body["what"], tuple(sets), tuple(steps), body.get("start"), tuple((body.get("pin") or {}).items()),
                  body.get("folder"), body.get("reads"))


# ---------------------------------------------------------------------- the table


def kept(figures: object, why: str = "from the results file: its run folders are gone") -> dict | None:
    """Figures the results file holds from runs whose folders are gone (another machine, a cleaned disk), measured
    with the same settings: kept, and marked so; None when there are none. (The tables that record each run's
    rows in their results file, amazon's, ablation's and scarce's, rebuild from those rows instead.)"""
    if not isinstance(figures, dict):
        return None
    return {**figures, "kept": figures.get("kept") or why}


def paired(a: dict[str, dict[str, list[int]]], b: dict[str, dict[str, list[int]]], domains: list[str],
           same_seeds: bool = True) -> dict:
    """A vs B on the same test rows, A minus B in points (bench.stats.compare: a paired bootstrap over the rows,
    stratified by domain, on each row's correctness averaged over seeds, and exact McNemar per seed): each system's
    runs as {seed: {domain: 0/1 per row}}; ``same_seeds``: only the seeds both have (two students)."""
    if same_seeds:
        a, b = ({s: runs[s] for s in runs if s in a and s in b} for runs in (a, b))
    flat = [{seed: sum((rows[d] for d in domains), []) for seed, rows in runs.items()} for runs in (a, b)]
    strata = [d for d in domains for _ in next(iter(a.values()))[d]] if a else []
    return compare(*flat, strata) if a and b else {}


def paired_tests(scored: dict[str, Scored], pairs, previous: dict, seed: int, model: str = "int8") -> dict:
    """"A vs B" (A minus B, ``paired`` on one seed) for each pair whose ``model`` test rows (int8: "A vs B"; another
    model: "A vs B (model)") are both in ``scored`` and are the same rows; a test of the results file whose folders
    are gone is kept, marked."""
    tests, suffix = {}, "" if model == "int8" else f" ({model})"
    for first, second in dict.fromkeys(map(tuple, pairs)):
        if first in scored and second in scored:
            one, other, name = scored[first], scored[second], f"{first} vs {second}{suffix}"
            if one.where != other.where:
                raise SystemExit(f"{second}: its test rows are not those of {first}")
            tests[name] = {"name": name, **paired({str(seed): one.correct}, {str(seed): other.correct},
                                                  list(one.correct)), "model": model}
    for name, test in previous.items():
        if name in tests or not isinstance(test, dict) or test.get("model", "int8") != model:
            continue
        if any(system not in scored for system in name.removesuffix(suffix).split(" vs ")):  # a folder is gone
            tests[name] = kept(test)
    return tests


def target(what: str, value: float | None, threshold: float, at_least: bool, source: str) -> dict:
    """One target and where it lands: pass / fail against ``threshold`` (``at_least``: value >= threshold, else
    value <= threshold), or not measured when there is no value."""
    status = NOT_MEASURED if value is None else "pass" if (value >= threshold if at_least else value <= threshold) \
        else "fail"
    return {"target": what, "threshold": threshold, "value": value, "status": status,
            "source": source if value is not None else None}


def significant(what: str, test: dict | None, threshold: float, p: float = 0.05) -> dict:
    """A "better by at least ``threshold`` with p < ``p``" target from a paired test; not measured without one."""
    if test is None:
        return target(what, None, threshold, True, "")
    row = target(what, test["diff"], threshold, True, test["name"])
    if row["status"] == "pass" and test["p_value"] >= p:
        row["status"] = "fail"
    row["p_value"] = test["p_value"]
    return row


def measure(suite: Suite, before: dict, extra: tuple[str, ...] = ()) -> dict:
    """A suite's (or its MPNet path's) rows, paired tests and the student best on dev: each system's figures from
    its finished folder, a student distilled but not shipped, the row the results file kept, or not measured."""
    results: dict[str, object] = {}
    for name, s in suite.systems.items():
        reads = s.reads or ("teacher" if s.start is None else "distilled")
        metrics, distilled = suite.finished(name, {}, extra), None
        if metrics is None and reads == "distilled":
            distilled = suite.finished(name, {}, extra, "fit,distill")
        results[name] = (READERS[reads](metrics) if metrics else read_distilled_only(distilled) if distilled
                         else kept((before.get("results") or {}).get(name)) or NOT_MEASURED)
    peers = suite.hook("rows")(suite, results, before.get("results") or {}) if suite.hook("rows") else {}
    shipped = [s for s, row in results.items() if s in suite.systems and suite.systems[s].start is not None
               and isinstance(row, dict) and "not_shipped" not in row]
    scored = {s: rows for s in shipped if "kept" not in results[s] and (rows := suite.scored(s, "int8", {}, extra))}
    if scored:
        order = next(iter(scored.values()))
        scored |= {name: rows(order) for name, rows in peers.items()}
    best_of = suite.spec.get("best_of")
    candidates = shipped if best_of == "students" else [s for s in shipped if s in (best_of or [])]
    best = max(candidates, key=lambda s: results[s]["dev_accuracy"], default=None)  # dev chooses, test is reported
    pairs = [*(suite.spec.get("tests") or []), *((best, other) for other in suite.spec.get("best_against") or []
                                                  if best and best != other)]
    seed = (suite.spec.get("seeds") or [42])[0]
    tests = paired_tests(scored, pairs, before.get("tests") or {}, seed)
    for model in (suite.spec.get("test_models") or ["int8"])[1:]:  # the same pairs as another model
        tests |= paired_tests({s: rows for s in scored if (rows := suite.scored(s, model, {}, extra))}, pairs,
                              before.get("tests") or {}, seed, model)
    return {"results": results, "tests": tests, "best": best}


def best_figures(prefix: str, results: dict, best: str | None, source: str) -> dict:
    """The int8 test accuracy and the teacher-minus-int8 gap of the student best on dev, for the targets."""
    row = results.get(best) if best else None
    if not isinstance(row, dict):
        return {}
    return {f"{prefix}int8": (((row.get("test_accuracy") or {}).get("int8") or {}).get("average"), source),
            f"{prefix}gap": (row.get("teacher_minus_int8"), source)}


def table(suite: Suite, extra: tuple[str, ...] = ()) -> dict:
    """The results document from the run folders as they stand (its sections in the order ``document`` gives);
    figures of the results file are kept only when they were measured with the same --set (``extra``)."""
    previous = read_json_object(suite.out)
    same = (previous.get("setup") or {}).get("extra_sets", []) == list(extra)
    before = previous if same else {}
    if suite.hook("table"):
        return suite.hook("table")(suite, extra, before, previous)
    main = measure(suite, before, extra)
    sections = {"setup": setup(suite, extra, best=main["best"]), "results": main["results"], "tests": main["tests"]}
    figures = best_figures("", main["results"], main["best"], f"{main['best']} (eval.json)")
    if suite.mpnet:
        path = measure(suite.mpnet, before.get("mpnet") or {}, extra)
        sections["mpnet"] = {"recipe": shown(suite.mpnet.recipe), "runs": shown(suite.mpnet.runs),
                             "best_distilled": path["best"], "systems": declared(suite.mpnet),
                             "results": path["results"], "tests": path["tests"]}
        figures |= best_figures("mpnet.", path["results"], path["best"], f"{path['best']} (eval.json, "
                                f"{shown(suite.mpnet.runs)})")
    for name, ref in ((suite.spec.get("hooks") or {}).get("sections") or {}).items():  # a section a hook computes
        sections[name] = resolve(ref)(suite, extra, before.get(name))
    if suite.hook("figures"):
        figures |= suite.hook("figures")(sections)
    sections["targets"] = targets(suite.spec.get("targets") or [], figures, sections["tests"], main["best"])
    # a section no table computes (a command's own figures: label-speed, fit-speed) stays as the file has it
    return {key: sections[key] if key in sections else previous.get(key) or NOT_MEASURED
            for key in suite.spec.get("document") or ["setup", "results", "tests", "targets"]}


def setup(suite: Suite, extra: tuple[str, ...] = (), **values) -> dict:
    """The suite file's ``setup`` with each "$name" filled: recipe, runs, data, extra_sets, systems (systems_steps:
    with their steps), paper, a value the caller gives (best), or a recipe setting ("$fit.epochs")."""
    config = recipe(list(extra), suite.recipe) if suite.recipe else None
    values |= {"recipe": shown(suite.recipe) if suite.recipe else None, "runs": shown(suite.runs),
               "extra_sets": list(extra), "systems": declared(suite), "systems_steps": declared(suite, steps=True),
               "paper": _paper(suite.spec.get("paper") or {}), "data": str(data_path(config)) if config else None}

    def fill(value: object) -> object:
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if not (isinstance(value, str) and value.startswith("$")):
            return value
        section, _, key = value[1:].partition(".")
        return values[value[1:]] if value[1:] in values else getattr(getattr(config, section), key)
    return {key: fill(value) for key, value in (suite.spec.get("setup") or {}).items()}


def row(suite: Suite, system: str, reader, before: dict, extra: tuple[str, ...] = (), binding: dict | None = None,
        missing: object = NOT_MEASURED) -> object:
    """A system's row: read from its finished folder, else the results file's row (its folder gone), kept, marked,
    else ``missing``."""
    metrics = suite.finished(system, binding, extra)
    return reader(metrics) if metrics else kept(before.get(suite.fill(system, binding or {}))) or missing


def declared(suite: Suite, steps: bool = False) -> dict[str, dict]:
    """The systems as the results files record them: what each is, its own --set, (its steps,) its start."""
    return {name: {"what": s.what, "sets": [suite.fill(item, {}, strict=False) for item in s.sets],
                   **({"steps": list(s.steps)} if steps else {}),
                   "start": s.start} for name, s in suite.systems.items()}


def targets(rows: list[dict], figures: dict, tests: dict, best: str | None) -> list[dict]:
    out = []
    for row in rows:
        threshold, at_least = (row["at_least"], True) if "at_least" in row else (row["at_most"], False)
        if "test" in row:
            out.append(significant(row["target"], tests.get(row["test"].format(best=best)), threshold))
        else:
            value, source = figures.get(row["value"], (None, ""))
            out.append(target(row["target"], value, threshold, at_least, source))
    return out


def _paper(rows: dict) -> dict:
    return {system: {"row": PAPER[row][0], "test_accuracy": dict(zip([*DOMAINS, "average"], PAPER[row][1]))}
            for system, row in rows.items()}


def write(suite: Suite, document: dict, extra: tuple[str, ...] = ()) -> bool:
    """The document into the suite's results file, unless no run folder of the suite is finished: then the file
    (figures whose folders are gone) is left as it stands. Whether it was written."""
    if not suite.anything_finished(extra):
        return False
    atomic_write_json(suite.out, document)
    for path, text in suite.files.items():  # amazon's predictions
        atomic_write_text(path, text)
    return True
