"""A lead draws SME samples by each design, reads the estimate and certifies the accepted set from the project page
in a real browser (headless Debian Chromium driven by Playwright against pytest-django's ``live_server``), by
keyboard where a form allows it; untrusted text (a judge's model name) is shown as text, never run."""

import numpy as np
import pytest
from playwright.sync_api import expect

from annotations.models import Review, SampleDraw, SampleMembership
from annotations.queue import in_sme_queue
from judging.estimate import accepted_set_precision
from judging.models import Certification, GateDecision, JudgeRun
from tests.browser import log_in
from tests.judging.test_estimate import build

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__larry_xss = 1">judge'


def big_project(project, lead):
    """300 items, 150 drawn uniformly and labelled; the SMEs accept exactly the items of P(accept) >= 0.7."""
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    return build(project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject"))


def plural(n: int) -> str:
    return "" if n == 1 else "s"


def keyboard_fill(page, label: str, value: str) -> None:
    """Type ``value`` into the focused field ``label`` over what it held."""
    expect(page.get_by_label(label, exact=True)).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)


def test_a_lead_draws_uniform_confidence_weighted_and_audit_samples(live_server, page, project, lead):
    big_project(project, lead)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    form = page.locator("form.sample-draw")
    rows = page.locator("table.draws tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("0.5000")  # build's draw: 150 of 300

    # Uniform, by keyboard only: size, then the design's select (first letter), then Tab to the button and Enter.
    form.get_by_label("Size").focus()
    keyboard_fill(page, "Size", "20")
    page.keyboard.press("Tab")
    expect(form.get_by_label("Design")).to_be_focused()
    page.keyboard.press("Tab")
    keyboard_fill(page, "Seed", "1")
    for _ in range(4):  # strata, allocation, uniform share, the button
        page.keyboard.press("Tab")
    expect(form.get_by_role("button", name="Draw for the SMEs")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_contain_text("(Uniform, seed 1): 20 of 150 items added to the SME queue")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text(f"{20 / 150:.4f}")

    # Confidence-weighted: chosen by typing its first letter on the focused select.
    form.get_by_label("Design").focus()
    page.keyboard.type("C")
    expect(form.get_by_label("Design")).to_have_value("confidence")
    form.get_by_label("Size").fill("20")
    form.get_by_label("Uniform share").fill("0.25")
    form.get_by_label("Seed").fill("2")
    form.get_by_role("button", name="Draw for the SMEs").click()
    expect(page.locator(".message")).to_contain_text("(Confidence-weighted, seed 2): 20 of 130 items added")
    weighted = SampleDraw.objects.get(design="confidence")
    pis = sorted(weighted.members.values_list("inclusion_probability", flat=True))
    assert sum(weighted.members.values_list("uniform_slice", flat=True)) == 5 and pis[0] < pis[-1]
    expect(rows.first).to_contain_text(f"{pis[0]:.4f} \N{EN DASH} {pis[-1]:.4f}")

    # An audit of the accepted set: only accepted items not yet queued, n/N each.
    accepted = set(
        GateDecision.objects.filter(outcome="accept").exclude(in_sme_queue("item_id")).values_list("item", flat=True)
    )
    form.get_by_label("Design").select_option("audit")
    form.get_by_label("Size").fill("10")
    form.get_by_label("Seed").fill("3")
    form.get_by_role("button", name="Draw for the SMEs").click()
    expect(page.locator(".message")).to_contain_text(f"10 of {len(accepted)} items added to the SME queue")
    audit = SampleDraw.objects.get(design="audit")
    assert set(audit.members.values_list("item_id", flat=True)) <= accepted
    expect(rows.first).to_contain_text(f"{10 / len(accepted):.4f}")
    expect(rows).to_have_count(4)
    assert SampleMembership.objects.count() == 150 + 20 + 20 + 10

    # A bad draw says what is wrong and draws nothing.
    form.get_by_label("Design").select_option("stratified")
    form.get_by_role("button", name="Draw for the SMEs").click()
    expect(page.locator(".message")).to_contain_text("No items drawn: a stratified draw needs strata")
    expect(rows).to_have_count(4)


def test_a_small_project_says_why_there_is_no_interval_and_nothing_is_certified(live_server, page, project, lead):
    build(project, lead, n_items=12, size=5, seed=1)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    accepted = accepted_set_precision(project)["accepted"]
    table = page.locator("table.estimate").first
    expect(table).to_contain_text("too few SME labels for an interval")
    expect(table).to_contain_text(f"{accepted['labelled']} SME labels")
    expect(table).to_contain_text(f"{accepted['uniform_labelled']} SME labels")
    expect(page.locator(".note", has_text="PPI++ interval").first).to_contain_text("at least 10 are needed")
    expect(page.get_by_text("No certificate yet")).to_be_visible()

    page.get_by_label("Precision at least").focus()
    keyboard_fill(page, "Precision at least", "0.9")
    page.keyboard.press("Tab")
    keyboard_fill(page, "δ (confidence 1 - δ)", "0.05")
    page.keyboard.press("Enter")  # Enter in a field submits its form
    expect(page.locator(".message")).to_contain_text("Nothing certified")
    made = Certification.objects.get()
    certificate = page.locator("table.certificate")
    expect(certificate.locator(".certified")).to_have_text("nothing certified")
    expect(certificate).to_contain_text(made.result["reason"])
    expect(certificate.locator(".next")).to_contain_text(
        f"At least {made.result['next']['more_labels']} more uniform-slice SME label"
    )


def test_a_lead_reads_the_estimate_and_certifies_by_keyboard(live_server, page, project, lead):
    big_project(project, lead)
    JudgeRun.objects.update(model=HOSTILE)  # a model name is whatever the judge's server says: untrusted
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    estimate = accepted_set_precision(project)["accepted"]
    ppi, classical = estimate["ppi"], estimate["classical"]
    table = page.locator("table.estimate").first
    expect(table).to_contain_text(f"{ppi['low']:.3f} \N{EN DASH} {ppi['high']:.3f}")
    expect(table).to_contain_text(f"{ppi['n']} SME labels, {ppi['N']} judged")
    expect(table).to_contain_text(f"{classical['low']:.3f} \N{EN DASH} {classical['high']:.3f}")
    expect(table).to_contain_text(f"{classical['n']} SME labels")

    # Certify by keyboard: Tab from the target to δ to the button, Enter.
    page.get_by_label("Precision at least").focus()
    keyboard_fill(page, "Precision at least", "0.8")
    page.keyboard.press("Tab")
    keyboard_fill(page, "δ (confidence 1 - δ)", "0.1")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Certify")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_contain_text("Certified")
    made = Certification.objects.get()
    assert made.threshold is not None and made.certified > 0 and made.created_by == lead
    certificate = page.locator("table.certificate")
    expect(certificate).to_contain_text("precision at least 0.800 with confidence 0.900 (δ = 0.1)")
    expect(certificate.locator(".certified")).to_have_text(f"{made.certified} accepted items")
    expect(certificate.locator(".threshold")).to_have_text(f"{made.threshold:.3f}")
    expect(certificate.locator(".bound")).to_have_text(f"{made.bound:.3f}")
    expect(certificate.locator(".n")).to_have_text(str(made.n))
    expect(certificate).to_contain_text(f"of {made.n_labelled} uniform-slice SME labels")
    held = GateDecision.objects.filter(outcome="pending").count()
    assert held > 0
    expect(page.get_by_text(f"The certificate in force holds back {held} judge accepts")).to_be_visible()
    expect(certificate).to_contain_text(
        f"{held} judge accepts below the threshold are pending, not exported; {held} of"
    )
    nxt = made.result["next"]
    expect(certificate.locator(".next")).to_contain_text(
        f"At least {nxt['more_labels']} more uniform-slice SME label{plural(nxt['more_labels'])} on items of "
        f"P(accept) ≥ {nxt['threshold']:.3f}"
    )
    expect(certificate.locator(".next")).to_contain_text(
        f"would certify {nxt['more_items']} more item{plural(nxt['more_items'])} ({nxt['items']} in all"
    )
    expect(page.locator(".certificate-since")).to_contain_text(
        f"Computed from {made.n_labelled} uniform-slice SME labels; no SME label"
    )
    # The hostile model name is text in the policy's label, and nothing ran.
    expect(page.get_by_text(HOSTILE).first).to_be_visible()
    assert page.evaluate("window.__larry_xss") is None

    # A new SME label: the page says the certificate is not up to date, and does not recompute it.
    item = GateDecision.objects.filter(outcome="pending").first().item
    Review.objects.create(item=item, reviewer=lead, decision="accept")
    page.reload()
    expect(page.locator(".certificate-since")).to_contain_text("Not up to date.")
    expect(page.locator(".certificate-since")).to_contain_text("since then 1 SME label made or changed")
    expect(page.locator(".certificate-since")).to_contain_text("Certify again to use them.")
    assert Certification.objects.count() == 1


def test_a_snapshot_made_in_the_browser_shows_its_certificate(live_server, page, project, lead):
    big_project(project, lead)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.get_by_label("Precision at least").fill("0.8")
    page.get_by_label("δ (confidence 1 - δ)").fill("0.1")
    page.get_by_role("button", name="Certify").click()
    expect(page.locator(".message")).to_contain_text("Certified")
    made = Certification.objects.get()
    page.get_by_role("link", name="Training sets").click()
    page.get_by_label("Validation share").fill("0")
    page.get_by_role("button", name="Snapshot").click()
    expect(page.locator("#training-set-status")).to_contain_text("ready")
    statement = page.locator(".snapshot-certificate")
    expect(statement).to_contain_text(
        f"Precision at least 0.8 with confidence 0.9 for the {made.certified} judge-accepted"
    )
    expect(statement).to_contain_text(f"from {made.n} SME labels")
    figures = page.locator(".snapshot-certificate-figures")
    expect(figures).to_contain_text(
        f"P(accept) ≥ {made.threshold:.3f}: {made.certified} judge-accepted items certified"
    )
    expect(figures).to_contain_text(f"{made.bound:.3f}, from n = {made.n} SME labels at the threshold")
    expect(page.get_by_text("no SME label, gating policy or calibration has changed since")).to_be_visible()
