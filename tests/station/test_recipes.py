"""Recipes (issue 22): several products on one line, selected by the PLC over OPC UA or over
MQTT, switched between two parts, journaled, and each part judged under the recipe it was
announced under. Against the real daemon (subprocess), a real Mosquitto and a real asyncua
client as the PLC; the config rules and the threshold policy without them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import Mosquitto, free_port
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, require_mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, drawn_video, still_part_video, write_config

from edge.config import ConfigError, parse
from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.inference import bundle as bundle_fmt
from edge.inference.override import recorded_scores
from edge.inference.policy import PolicyError, choose, parse_policy
from edge.inference.recipes import RecipeError, policy_threshold
from edge.lifecycle import load_recipes

CRISP = ROOT / "models" / "casting-cnn-crisp"
A, B = "impeller-a", "impeller-b"
POLICY_B = "cost:50"


@pytest.fixture(scope="module")
def ids() -> dict[str, str]:
    if not (BUNDLE / "model.tflite").is_file() or not (CRISP / "model.tflite").is_file():
        pytest.skip(f"needs the shipped bundles {BUNDLE} and {CRISP}")
    return {A: bundle_fmt.load(BUNDLE).short_id, B: bundle_fmt.load(CRISP).short_id}


def recipes_section(**b_extra: Any) -> dict[str, Any]:
    return {"start": A, "products": {
        A: {"bundle": str(BUNDLE), "description": "the shipped impeller"},
        B: {"bundle": str(CRISP), "threshold_policy": POLICY_B, "min_diameter_px": 150, **b_extra}}}


def recipe_config(tmp: Path, broker_port: int, prefix: str, source: Path, **over: Any) -> Path:
    """write_config with recipes instead of model.bundle (a config with both is refused)."""
    path = write_config(tmp, broker_port, prefix, source, **over)
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("model")
    cfg["recipes"] = recipes_section()
    path.write_text(yaml.safe_dump(cfg))
    return path


def switches(journal: Path) -> list[Any]:
    with Journal(journal) as j:
        return j.recipe_switches()


# -- the configuration -------------------------------------------------------------------

def problems_of(text: str, source: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text, source)
    return "\n".join(e.value.problems)


def test_recipe_rules_are_reported_at_their_line() -> None:
    schema = ("recipes:\n  products:\n"
              "    a:\n      bundle: x\n      threshold: 0.1\n      threshold_policy: cost:20\n"
              "    'b c':\n      bundle: y\n"
              "    d:\n      bundle: z\n      threshold_policy: cost:-1\n")
    problems = problems_of(schema, "s.yaml")
    assert "s.yaml:3: recipes.products.a: " in problems and "give one" in problems, problems
    assert "s.yaml:7: recipes.products.b c" in problems and "recipe name" in problems, problems
    assert "s.yaml:11: recipes.products.d.threshold_policy:" in problems and "cost:-1" in problems, problems
    # Rules between sections, once the schema holds: each at its own line.
    text = ("model:\n  bundle: models/casting-cnn\n"
            "recipes:\n  start: c\n  products:\n"
            "    d:\n      bundle: z\n      roi: [0, 0, 10, 10]\n"
            "    e:\n      bundle: w\n      min_diameter_px: 800\n")
    problems = problems_of(text, "r.yaml")
    assert "r.yaml:2: model.bundle: set per recipe" in problems, problems
    assert "r.yaml:4: recipes.start: 'c' is not a recipe" in problems, problems
    assert "r.yaml:8: recipes.products.d.roi: a recipe's roi needs inspect.locate: roi" in problems, problems
    assert "r.yaml:11: recipes.products.e.min_diameter_px: rim diameter range 800..700 px is empty" in problems, problems
    # A shadow candidate is trained for one product: with recipes it must name which.
    with pytest.raises(ConfigError, match="model.shadow: with recipes, name the recipe"):
        parse("model:\n  shadow: models/x\nrecipes:\n  products:\n    a: {bundle: y}\n")
    cfg = parse("recipes:\n  products:\n    a: {bundle: y}\n    b: {bundle: z}\n", "ok.yaml", base=Path("/etc/ei"))
    assert cfg.recipes.first == "a" and cfg.recipes.products["b"].bundle == Path("/etc/ei/z")


def test_a_threshold_policy_chooses_on_the_bundles_validation_scores_as_the_trainer_does(
        ids: dict[str, str]) -> None:
    meta = bundle_fmt.load(CRISP).meta
    defect, good = recorded_scores(meta)  # type: ignore[misc]
    labels = np.r_[np.ones(len(defect), bool), np.zeros(len(good), bool)]
    for policy in ("cost:20", POLICY_B, "recall:1"):
        assert policy_threshold(meta, policy) == choose(labels, np.r_[defect, good], parse_policy(policy))
    # A bundle whose model outputs the logit is chosen for on the logit's finer grid, as fit chose it.
    as_logit = dict(meta, output=dict(meta["output"], represents="logit"))
    assert policy_threshold(as_logit, "cost:20") == choose(labels, np.r_[defect, good], parse_policy("cost:20"), "logit")
    with pytest.raises(PolicyError, match=r"output.represents: 'probability'"):
        policy_threshold(dict(meta, output=dict(meta["output"], represents="probability")), "cost:20")
    # Stricter costs never choose a more lenient threshold.
    assert policy_threshold(meta, "cost:200") <= policy_threshold(meta, "cost:20") <= policy_threshold(meta, "cost:2")
    cfg = parse(yaml.safe_dump({"recipes": recipes_section()}))
    book = load_recipes(cfg)
    assert book is not None and book.names == [A, B]
    assert book[B].inspector.threshold == policy_threshold(meta, POLICY_B)
    assert book[A].inspector.threshold == bundle_fmt.load(BUNDLE).threshold
    assert (book[A].model_id, book[B].model_id) == (ids[A], ids[B])
    assert book[B].locate.min_diameter == 150 and book[A].locate.min_diameter == cfg.inspect.min_diameter_px
    # A policy more lenient than the bundle's validation allows is refused by the override check, by key.
    lenient = parse(yaml.safe_dump({"recipes": recipes_section(threshold_policy="cost:0.01")}))
    with pytest.raises(RecipeError) as e:
        load_recipes(lenient)
    assert e.value.key == ("recipes", "products", B, "threshold_policy"), e.value
    assert f"recipes.products.{B}.accept_validation_escapes" in str(e.value)


def test_check_config_names_a_recipe_whose_bundle_cannot_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recipes:\n  products:\n    good:\n      bundle: {BUNDLE}\n    gone:\n      bundle: nowhere\n")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--check-config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{cfg}:6: recipes.products.gone.bundle:" in r.stderr and "nowhere" in r.stderr, r.stderr
    assert "recipes.products.good" not in r.stderr, r.stderr
    cfg.write_text(f"recipes:\n  products:\n    good:\n      bundle: {BUNDLE}\n    old:\n      bundle: {CRISP}\n"
                   f"      threshold_policy: '{POLICY_B}'\n")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--check-config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()[1:]  # what each recipe runs, its threshold as its policy sets it
    crisp = bundle_fmt.load(CRISP)
    assert [line.split(":")[0] for line in lines] == ["  recipe good", "  recipe old"], lines
    assert f"({bundle_fmt.load(BUNDLE).short_id}), threshold " in lines[0], lines
    assert f"({crisp.short_id}), threshold {policy_threshold(crisp.meta, POLICY_B):.8g} (" in lines[1], lines


def test_promote_asks_which_recipe_and_swaps_only_that_ones_bundle(tmp_path: Path) -> None:
    import shutil  # noqa: PLC0415

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(BUNDLE, a, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    shutil.copytree(CRISP, b, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recipes:\n  products:\n    {A}: {{bundle: {a}}}\n    {B}: {{bundle: {b}}}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    before = {p: bundle_fmt.load(p).short_id for p in (a, b)}
    r = cli("--promote", str(CRISP))
    assert r.returncode == 2 and "--recipe" in r.stderr and A in r.stderr, r.stderr
    assert {p: bundle_fmt.load(p).short_id for p in (a, b)} == before  # nothing changed
    r = cli("--promote", str(CRISP), "--recipe", A)
    assert r.returncode == 0, r.stderr
    assert bundle_fmt.load(a).short_id == before[b] and bundle_fmt.load(b).short_id == before[b]
    r = cli("--rollback", "--recipe", A)
    assert r.returncode == 0, r.stderr
    assert bundle_fmt.load(a).short_id == before[a]


# -- the running daemon ------------------------------------------------------------------

def test_the_plc_selects_a_recipe_between_parts_and_a_restart_resumes_it(
        mosquitto: Mosquitto, tmp_path: Path, ids: dict[str, str]) -> None:  # noqa: F811
    pytest.importorskip("asyncua")
    from opcua_plc import Plc, run, url_of  # noqa: PLC0415

    from edge.delivery import opcua_nodes as nodes  # noqa: PLC0415

    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    port = free_port()
    cfg = recipe_config(tmp_path, mosquitto.port, prefix, still_part_video(tmp_path / "still.avi"),
                        camera={"loop": True}, inspect={"mode": "trigger", "trigger_wait_s": 1.0,
                                                        "max_trigger_age_s": 30},
                        opcua={"enabled": True, "listen": f"127.0.0.1:{port}", "security": ["none"],
                               "anonymous": "write", "state_dir": str(tmp_path / "opcua")})
    threshold_b = policy_threshold(bundle_fmt.load(CRISP).meta, POLICY_B)
    sub = Collector(mosquitto.port, [t.decision, t.recipe])
    seen: dict[str, dict[str, Any]] = {}

    async def judged(p: Any, part_id: str) -> dict[str, Any]:
        assert await p.trigger(part_id) == nodes.TRIGGER_OK
        seen[part_id] = r = await p.result(part_id)
        await p.ack(r["Result.Seq"])
        await p.wait(lambda v: not v["ResultReady"], "ResultReady")
        return r

    async def first_run() -> None:
        async with Plc(url_of(port)) as p:
            await p.wait(lambda v: v["Ready"] and v["RecipeActive"] == A, "Ready", "RecipeActive")
            r = await judged(p, "P-1")
            assert (r["Result.Recipe"], r["Result.ModelId"]) == (A, ids[A]), r
            # An unknown recipe is refused, said, and changes nothing.
            assert await p.select_recipe("impeller-z") == nodes.RECIPE_UNKNOWN
            got = await p.read("Status.ErrorCode", "Status.ErrorText", "RecipeActive")
            assert got["Status.ErrorCode"] == nodes.RECIPE_REFUSED and "impeller-z" in got["Status.ErrorText"], got
            assert got["RecipeActive"] == A
            # Taken: in force between two parts, without waiting for a trigger; the next part announced
            # is judged under it, by its own bundle and threshold.
            assert await p.select_recipe(B) == nodes.RECIPE_OK
            await p.wait(lambda v: v["RecipeActive"] == B, "RecipeActive")
            r = await judged(p, "P-2")
            assert (r["Result.Recipe"], r["Result.ModelId"]) == (B, ids[B]), r
            assert r["Result.Threshold"] == pytest.approx(threshold_b)

    async def after_restart() -> None:
        async with Plc(url_of(port)) as p:
            await p.wait(lambda v: v["Ready"], "Ready")
            assert (await p.read("RecipeActive"))["RecipeActive"] == B  # resumed, not the config's start
            r = await judged(p, "P-3")
            assert (r["Result.Recipe"], r["Result.ModelId"]) == (B, ids[B]), r

    try:
        with DaemonProcess(cfg) as proc:
            run(first_run())
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
        with DaemonProcess(cfg) as proc:
            run(after_restart())
            assert sub.wait(lambda ms: len([m for m in ms if m.topic == t.decision]) >= 3, 30)
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
        decisions = {m.json["part_id"]: m.json for m in sub.messages if m.topic == t.decision}
        states = [m.json for m in sub.messages if m.topic == t.recipe]
    finally:
        sub.close()
    assert {k: (d["recipe"], d["model"]) for k, d in decisions.items()} == {
        "P-1": (A, ids[A]), "P-2": (B, ids[B]), "P-3": (B, ids[B])}, decisions
    for part_id, d in decisions.items():  # one journal row, two wires
        assert (seen[part_id]["Result.Seq"], seen[part_id]["Result.Recipe"]) == (d["seq"], d["recipe"])
    rows = switches(tmp_path / "journal.sqlite")
    assert [(s.recipe, s.previous, s.source) for s in rows] == [(A, None, "start"), (B, A, "opcua")], rows
    assert decisions["P-1"]["seq"] <= rows[1].after_seq < decisions["P-2"]["seq"], (rows, decisions)
    assert states[-1]["recipe"] == B and states[-1]["source"] == "opcua" and states[-1]["model"] == ids[B], states
    assert "recipe switched" in out or "recipe resumed from the journal" in out, out[-3000:]


def test_mqtt_selects_recipes_and_a_part_is_judged_under_the_recipe_it_was_announced_under(
        mosquitto: Mosquitto, tmp_path: Path, ids: dict[str, str]) -> None:  # noqa: F811
    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = recipe_config(tmp_path, mosquitto.port, prefix, still_part_video(tmp_path / "still.avi"),
                        camera={"loop": True}, inspect={"mode": "trigger", "trigger_wait_s": 1.0,
                                                        "max_trigger_age_s": 30})
    sub = Collector(mosquitto.port, [t.decision, t.recipe, t.recipe_reply, t.status])

    def send(topic: str, payload: Any, retain: bool = False) -> None:
        sub.client.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(10)

    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.recipe and m.json["recipe"] == A for m in ms)
                            and any(m.topic == t.status and m.json.get("state") == "online" for m in ms), 60)
            # In this order on one connection: T-1 is announced under A, whatever is inspected first.
            send(t.trigger, {"part_id": "T-1"})
            send(t.recipe_set, {"recipe": B, "id": "r1"})
            send(t.trigger, {"part_id": "T-2"})
            send(t.trigger, {"part_id": "T-3", "recipe": A})  # the trigger names its product
            send(t.trigger, {"part_id": "T-4", "recipe": "impeller-ghost"})
            send(t.recipe_set, {"recipe": "impeller-ghost", "id": "r2"})
            send(t.recipe_set, {"recipe": 5, "id": "r3"})
            send(t.recipe_set, {"recipe": A, "id": "r4"}, retain=True)  # an event, never a state: ignored
            assert sub.wait(lambda ms: len([m for m in ms if m.topic == t.decision]) >= 4
                            and len([m for m in ms if m.topic == t.recipe_reply]) >= 3, 60)
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
        sub.client.publish(t.recipe_set, b"", qos=1, retain=True).wait_for_publish(10)  # clear it
        late = Collector(mosquitto.port, [t.recipe])  # a dashboard connecting later reads the recipe in force
        try:
            assert late.wait(lambda ms: bool(ms), 10)
            assert late.messages[0].retain and late.messages[0].json["recipe"] == B, late.messages
        finally:
            late.close()
        decisions = {m.json["part_id"]: m.json for m in sub.messages if m.topic == t.decision}
        replies = {m.json["id"]: m.json for m in sub.messages if m.topic == t.recipe_reply}
        states = [m.json for m in sub.messages if m.topic == t.recipe]
    finally:
        sub.close()
    got = {k: (d["recipe"], d["model"], d["reason"]) for k, d in decisions.items()}
    assert got["T-1"] == (A, ids[A], "model") and got["T-2"] == (B, ids[B], "model"), got
    assert got["T-3"] == (A, ids[A], "model"), got
    assert got["T-4"][0] == "impeller-ghost" and got["T-4"][2] == "fault:unknown_recipe", got
    assert decisions["T-4"]["decision"] == "reject"
    assert replies["r1"]["taken"] is True and replies["r1"]["error"] is None, replies
    assert replies["r2"]["taken"] is False and "impeller-ghost" in replies["r2"]["error"], replies
    assert replies[None]["taken"] is False and "malformed" in replies[None]["error"], replies  # no id parsed
    assert "r4" not in replies
    assert states[-1]["recipe"] == B and states[-1]["request_id"] == "r1", states
    rows = switches(tmp_path / "journal.sqlite")
    assert [(s.recipe, s.source, s.request_id) for s in rows] == [(A, "start", None), (B, "mqtt", "r1")], rows
    assert "retained recipe request ignored" in out, out[-3000:]


def test_in_continuous_mode_a_switch_falls_between_two_decisions(
        mosquitto: Mosquitto, tmp_path: Path, ids: dict[str, str]) -> None:  # noqa: F811
    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = recipe_config(tmp_path, mosquitto.port, prefix, drawn_video(tmp_path, parts=4), camera={"loop": True})
    sub = Collector(mosquitto.port, [t.decision, t.recipe_reply])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: len([m for m in ms if m.topic == t.decision]) >= 2, 90)
            sub.client.publish(t.recipe_set, json.dumps({"recipe": B}), qos=1).wait_for_publish(10)
            assert sub.wait(lambda ms: any(m.topic == t.decision and m.json.get("recipe") == B for m in ms), 90)
            assert sub.wait(lambda ms: len([m for m in ms if m.topic == t.decision and m.json["recipe"] == B]) >= 2,
                            90)
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
        decisions = sorted((m.json for m in sub.messages if m.topic == t.decision), key=lambda d: d["seq"])
    finally:
        sub.close()
    switch = switches(tmp_path / "journal.sqlite")[-1]
    assert (switch.recipe, switch.source) == (B, "mqtt")
    for d in decisions:  # every decision up to the switch under A, every one after it under B
        want = (A, ids[A]) if d["seq"] <= switch.after_seq else (B, ids[B])
        assert (d["recipe"], d["model"]) == want, (d, switch)


def test_sighup_reloads_every_recipe_keeps_the_one_in_force_and_refuses_to_drop_it(
        mosquitto: Mosquitto, tmp_path: Path, ids: dict[str, str]) -> None:  # noqa: F811
    import signal  # noqa: PLC0415

    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = recipe_config(tmp_path, mosquitto.port, prefix, drawn_video(tmp_path, parts=4), camera={"loop": True})
    doc = yaml.safe_load(cfg.read_text())
    sub = Collector(mosquitto.port, [t.decision])

    def decided() -> list[dict[str, Any]]:
        return [m.json for m in sub.on(t.decision)]

    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: len(decided()) >= 2, 90)
            # A stricter fixed threshold for the recipe in force: it applies from the next part on.
            doc["recipes"]["products"][A]["threshold"] = 0.01
            cfg.write_text(yaml.safe_dump(doc))
            proc.send_signal(signal.SIGHUP)
            assert sub.wait(lambda ms: any(d["threshold"] == 0.01 for d in decided()), 90), decided()[-3:]
            # A config without the recipe in force is refused whole: the line goes on as it was.
            dropped = {**doc, "recipes": {"products": {B: doc["recipes"]["products"][B]}}}
            cfg.write_text(yaml.safe_dump(dropped))
            n = len(decided())
            proc.send_signal(signal.SIGHUP)
            assert sub.wait(lambda ms: len(decided()) >= n + 2, 90)
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
    finally:
        sub.close()
    got = decided()
    assert "reload refused" in out and "select another recipe first" in out, out[-3000:]
    first = next(i for i, d in enumerate(got) if d["threshold"] == 0.01)
    assert first >= 2 and all(d["threshold"] == 0.01 for d in got[first:]), [d["threshold"] for d in got]
    assert {(d["recipe"], d["model"]) for d in got} == {(A, ids[A])}
