"""``ops.scaffold.new_handler`` (``hookstream new-handler``): what it writes passes ruff and pytest as written,
and it refuses what it must.

The files are written into a project skeleton under ``tmp_path`` (``handlers/`` and ``tests/`` packages), never
into this repository, so no other test run can import a half-made handler. The generated test runs in a
subprocess whose working directory is that skeleton: there ``handlers`` is the skeleton's package, while
``streams`` and ``ops`` are this project's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.fixtures import UnknownEventType, event_types, fixture_for
from ops.scaffold import ScaffoldError, module_name, new_handler
from streams.registry import registry

REPO = Path(__file__).resolve().parents[1]

registry.discover()


def _has_fixture(event_type: str) -> bool:
    try:
        fixture_for(event_type)
    except UnknownEventType:
        return False
    return True


def _unhandled(preferred: str, *, with_fixture: bool) -> str:
    """``preferred`` while no shipped handler takes it, else another such type (so the test outlives new handlers)."""
    candidates = [preferred, *event_types()]
    return next(t for t in candidates if registry.get(t) is None and _has_fixture(t) == with_fixture)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for package in ("handlers", "tests"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the skeleton is its own rootdir
    return tmp_path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _pytest(project: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    """The generated ``tests`` run by pytest in the skeleton, as its owner would run them."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)


def test_module_names() -> None:
    assert module_name("customer.subscription.trial_will_end") == "customer_subscription_trial_will_end"
    assert module_name("payout.paid") == "payout_paid"
    with pytest.raises(ScaffoldError):
        module_name("Invoice Paid")


def test_generated_handlers_and_tests_pass_ruff_and_pytest(project: Path) -> None:
    with_fixture = _unhandled("payout.paid", with_fixture=True)
    without_fixture = _unhandled("three_d_secure.authentication.succeeded", with_fixture=False)

    handler, test = new_handler(with_fixture, project)
    assert handler == project / "handlers" / f"{module_name(with_fixture)}.py"
    assert test == project / "tests" / f"test_handler_{module_name(with_fixture)}.py"
    assert f'@on("{with_fixture}")' in handler.read_text()
    bare_handler, bare_test = new_handler(without_fixture, project)
    assert f'@on("{without_fixture}", object_type=' in bare_handler.read_text()
    assert "TODO" in bare_handler.read_text()
    # a type newer than hookstream's list: its object type is the user's (--object-type), not a guess
    newer_handler, newer_test = new_handler("payout.reconciliation_settled", project, object_type="payout")
    assert '@on("payout.reconciliation_settled", object_type="payout")' in newer_handler.read_text()
    assert "is a guess" not in newer_handler.read_text() and 'OBJECT_TYPE = "payout"' in newer_test.read_text()
    # a type whose events carry several kinds of object: another than its example's, around that one's example
    card_handler, card_test = new_handler("customer.source.expiring", project, object_type="card")
    assert '@on("customer.source.expiring", object_type="card")' in card_handler.read_text()
    assert 'OBJECT_TYPE = "card"' in card_test.read_text() and "object_type=OBJECT_TYPE" in card_test.read_text()
    files = [str(handler), str(test), str(bare_handler), str(bare_test), str(newer_handler), str(newer_test)]
    files += [str(card_handler), str(card_test)]

    config = ["--config", str(REPO / "pyproject.toml"), "--no-cache"]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", *config, *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *config, *files], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr

    run = _pytest(project, *files[1::2])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout


def test_the_generated_test_still_passes_once_the_handler_declares_a_model(project: Path) -> None:
    """README's step 4: the handler gets ``model=`` and reads attributes; the test decodes as the worker does."""
    event_type = _unhandled("payout.paid", with_fixture=True)
    handler, test = new_handler(event_type, project)
    source = handler.read_text()
    kept = re.findall(r'obj\.get\("(\w+)"\)', source)
    assert kept  # the template keeps some of the object's fields
    fields = [*kept, "status"]  # README: include status if the state's status should follow the object's
    model = "class Model(msgspec.Struct):\n" + "".join(f"    {name}: Any = None\n" for name in fields)
    source = re.sub(r'obj\.get\("(\w+)"\)', r"obj.\1", source)
    source = source.replace(f'@on("{event_type}")', f'{model}\n\n@on("{event_type}", model=Model)')
    source = source.replace("from streams.events", "from typing import Any\n\nimport msgspec\n\nfrom streams.events")
    handler.write_text(source)

    run = _pytest(project, str(test))
    assert run.returncode == 0, source + run.stdout + run.stderr


def test_refuses_a_type_stripe_does_not_send(project: Path) -> None:
    """A typo is refused with the types it may mean; a type newer than the list needs its object type."""
    with pytest.raises(ScaffoldError, match=r"event-types\.txt.*--object-type OBJECT"):
        new_handler("payout.vanished", project)
    with pytest.raises(ScaffoldError, match=r"did you mean payout\.paid\b"):
        new_handler("payout.payed", project)
    with pytest.raises(ScaffoldError, match="not an event type"):
        new_handler("payout", project)
    with pytest.raises(ScaffoldError, match="not an object type"):
        new_handler("payout.vanished", project, object_type="Payout!")
    # a listed type's object is known: another one would subscribe the handler to a topic its events never reach
    with pytest.raises(ScaffoldError, match=r"^--object-type 'charge': payout\.paid events carry a payout$"):
        new_handler("payout.paid", project, object_type="charge")
    with pytest.raises(ScaffoldError, match=r"'charge': \S+ events carry a bank_account or a card$"):
        new_handler("account.external_account.created", project, object_type="charge")
    with pytest.raises(
        ScaffoldError, match=r"'cardd': \S+ events carry a bank_account, a card or a source \(did you mean card\?\)"
    ):
        new_handler("customer.source.created", project, object_type="cardd")
    with pytest.raises(
        ScaffoldError, match=r"'invoices': invoice\.finalized events carry an invoice \(did you mean invoice\?\)"
    ):
        new_handler("invoice.finalized", project, object_type="invoices")
    assert _listing(project) == ["handlers", "handlers/__init__.py", "pytest.ini", "tests", "tests/__init__.py"]


def test_refuses_a_type_a_shipped_handler_takes(project: Path) -> None:
    with pytest.raises(ScaffoldError, match=r"invoice\.paid already has a handler: handlers\.invoices\."):
        new_handler("invoice.paid", project)
    assert not (project / "handlers" / "invoice_paid.py").exists()


def test_refuses_a_type_a_handler_module_of_the_project_takes(project: Path) -> None:
    # read, not imported: this test process never registers these types
    (project / "handlers" / "payouts.py").write_text(
        "from streams.registry import on\n\n\n"
        '@on("payout.failed", "payout.canceled")\n'
        "async def payout_changed(event, ctx):\n"
        "    pass\n"
    )
    with pytest.raises(ScaffoldError, match=r"payout\.canceled already has a handler: .*payouts\.py"):
        new_handler("payout.canceled", project)
    assert not (project / "handlers" / "payout_canceled.py").exists()
    assert registry.get("payout.canceled") is None


def test_each_kind_of_object_of_an_event_type_gets_its_own_handler_module(project: Path) -> None:
    """``customer.source.created`` carries a card, a bank account or a source: a handler per kind, side by side, each
    with its test; a kind that has one is refused."""
    source_handler, source_test = new_handler("customer.source.created", project)  # the example's kind: a source
    card_handler, card_test = new_handler("customer.source.created", project, object_type="card")
    assert (source_handler.name, card_handler.name) == ("customer_source_created.py", "customer_source_created_card.py")
    with pytest.raises(ScaffoldError, match=r"customer\.source\.created \(card\) already has a handler: .*_card\.py"):
        new_handler("customer.source.created", project, object_type="card")
    with pytest.raises(ScaffoldError, match=r"customer\.source\.created \(source\) already has a handler"):
        new_handler("customer.source.created", project, object_type="source")
    bank_handler, bank_test = new_handler("customer.source.created", project, object_type="bank_account")
    assert bank_handler.name == "customer_source_created_bank_account.py"
    tests = [str(source_test), str(card_test), str(bank_test)]
    run = _pytest(project, *tests)  # one process imports all three: a worker would too
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_a_second_kind_of_a_type_newer_than_the_list_gets_its_own_module(project: Path) -> None:
    first, _ = new_handler("widget.thing.created", project, object_type="widget")
    second, second_test = new_handler("widget.thing.created", project, object_type="gadget")
    assert (first.name, second.name) == ("widget_thing_created.py", "widget_thing_created_gadget.py")
    assert 'OBJECT_TYPE = "gadget"' in second_test.read_text()
    with pytest.raises(ScaffoldError, match=r"widget\.thing\.created already has a handler: .*_gadget\.py"):
        new_handler("widget.thing.created", project, object_type="gadget")


def test_an_object_type_the_scan_cannot_read_is_taken_for_any_kind(project: Path) -> None:
    """``object_type=CARD`` (a name): the module may take any kind, so none is scaffolded beside it; a second
    handler of its kind would stop the worker."""
    (project / "handlers" / "sources.py").write_text(
        'from streams.registry import on\n\nCARD = "card"\n\n\n'
        '@on("customer.source.created", object_type=CARD)\n'
        "async def card(event, ctx):\n"
        "    pass\n"
    )
    for kind in ("card", "source"):
        with pytest.raises(ScaffoldError, match=r"customer\.source\.created \(\w+\) already has a handler: .*sources"):
            new_handler("customer.source.created", project, object_type=kind)


def test_refuses_existing_files_and_writes_nothing(project: Path) -> None:
    event_type = _unhandled("payout.paid", with_fixture=True)
    module = module_name(event_type)
    existing = project / "handlers" / f"{module}.py"
    existing.write_text("# mine\n")
    with pytest.raises(ScaffoldError, match="exists already"):
        new_handler(event_type, project)
    assert existing.read_text() == "# mine\n"
    assert not (project / "tests" / f"test_handler_{module}.py").exists()

    existing.unlink()
    existing_test = project / "tests" / f"test_handler_{module}.py"
    existing_test.write_text("# mine too\n")
    with pytest.raises(ScaffoldError, match="exists already"):
        new_handler(event_type, project)
    assert existing_test.read_text() == "# mine too\n"
    assert not existing.exists()


def test_refuses_a_package_for_the_projects_root(project: Path) -> None:
    """Run from tests/ (whose handlers/ holds the suite's own), new-handler wrote tests/handlers/... and
    tests/tests/..., whose test then failed: that handlers/ is imported as tests.handlers, never as handlers."""
    event_type = _unhandled("payout.paid", with_fixture=True)
    inner = project / "tests"
    (inner / "handlers").mkdir()
    before = _listing(project)
    with pytest.raises(ScaffoldError, match="is a package, not the project's root"):
        new_handler(event_type, inner)
    assert _listing(project) == before


def test_scaffold_error_is_a_value_error() -> None:
    assert issubclass(ScaffoldError, ValueError)


def test_refuses_a_type_a_module_of_hookstream_handlers_takes(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOOKSTREAM_HANDLERS names more than ``handlers``: a second handler written for a type one of its modules takes
    passed its own test, and the worker then refused to start."""
    from streams.registry import HandlerRegistry

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "acme_handlers.py").write_text(
        "from streams.registry import on\n\n\n@on('topup.reversed')\nasync def reversed_(event, ctx):\n    pass\n"
    )
    (elsewhere / "broken_handlers.py").write_text("async def h(event, ctx)\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    fresh = HandlerRegistry()  # the shared registry stays as it was for the other tests
    monkeypatch.setattr("streams.registry.registry", fresh)
    monkeypatch.setattr("streams.registry.on", fresh.on)
    try:
        with pytest.raises(ScaffoldError, match=r"topup\.reversed already has a handler: acme_handlers\.reversed_"):
            new_handler("topup.reversed", project, ["acme_handlers"])
        with pytest.raises(ScaffoldError, match="handler module broken_handlers does not import: SyntaxError"):
            new_handler("topup.reversed", project, ["broken_handlers"])
    finally:
        for name in ("acme_handlers", "broken_handlers"):
            sys.modules.pop(name, None)
    assert not (project / "handlers" / "topup_reversed.py").exists()


def test_a_module_of_hookstream_handlers_takes_only_the_kind_it_registered(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read through the registry (imported): its card handler refuses a card one, not a bank account one."""
    from streams.registry import HandlerRegistry

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "acme_sources.py").write_text(
        "from streams.registry import on\n\n\n"
        "@on('customer.source.created', object_type='card')\n"
        "async def card(event, ctx):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(elsewhere))
    fresh = HandlerRegistry()
    monkeypatch.setattr("streams.registry.registry", fresh)
    monkeypatch.setattr("streams.registry.on", fresh.on)
    try:
        with pytest.raises(ScaffoldError, match=r"created \(card\) already has a handler: acme_sources\.card"):
            new_handler("customer.source.created", project, ["acme_sources"], object_type="card")
        handler, _ = new_handler("customer.source.created", project, ["acme_sources"], object_type="bank_account")
    finally:
        sys.modules.pop("acme_sources", None)
    assert handler.name == "customer_source_created_bank_account.py"
