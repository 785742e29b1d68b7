"""``readingroom demo``: a ready-to-explore network on the embedded default.

Seeds five sites (an academic hub, three community hospitals and an
outpatient centre in three time zones), a few users with known passwords,
and about twenty synthetic studies generated locally, then prints how to
reach everything. Running it again reuses what exists.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from sqlalchemy import func, select

from readingroom.archive.importer import Item, import_items
from readingroom.archive.models import Study
from readingroom.config import CONFIG_FILE_NAME, Settings, load_settings
from readingroom.demo.synth import DEMO_SITES, write_demo_dataset
from readingroom.governance.models import Site
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.runtime import Runtime
from readingroom.workflow.readers import get_reader, set_reader

SITE_DETAILS: dict[str, tuple[str, str, str]] = {
    # code: (time zone, jurisdiction, kind)
    "HUB": ("America/New_York", "US-NY", "hub"),
    "STB": ("America/New_York", "US-NY", "spoke"),
    "LKS": ("America/Chicago", "US-IL", "spoke"),
    "MVG": ("America/Chicago", "US-IL", "spoke"),
    "CDH": ("America/Los_Angeles", "US-CA", "spoke"),
}

DEMO_USERS: tuple[tuple[str, str, str, str, str], ...] = (
    # username, password, role, full name, site code
    ("admin", "admin", "admin", "Network Administrator", "HUB"),
    ("rad.chen", "demo", "radiologist", "Dr. Wei Chen", "HUB"),
    ("rad.osei", "demo", "radiologist", "Dr. Kwame Osei", "LKS"),
    ("tech.walsh", "demo", "technologist", "Patrick Walsh", "STB"),
    ("ref.hartmann", "demo", "referring_clinician", "Dr. Lena Hartmann", "MVG"),
    ("auditor", "demo", "auditor", "Compliance Office", "HUB"),
)
#: How the demo's physicians appear in DICOM (ReferringPhysicianName): links them to the studies they ordered.
DEMO_PHYSICIAN_NAMES = {"ref.hartmann": "Hartmann^Lena", "rad.osei": "Osei^Kwame"}

#: username: (time zone, subspecialties, licence jurisdictions, credentialed sites; first = home)
DEMO_READERS: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "rad.chen": ("America/New_York", ["neuro", "body"], ["US-NY", "US-IL"], ["HUB", "STB", "LKS"]),
    "rad.osei": ("America/Chicago", ["body", "msk"], ["US-IL", "US-CA"], ["LKS", "MVG", "CDH"]),
}

DEMO_CONFIG = """\
# ReadingRoom demo configuration (see README "Configuration").
# Any calling AE title from this machine may store and query: convenient for
# trying storescu/findscu, not for production.
accept_loopback_aets = true
stable_age_seconds = 30
"""


def _write_config(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_FILE_NAME
    if not path.exists():
        path.write_text(DEMO_CONFIG)


def seed_demo(settings: Settings, *, n_studies: int = 20, console: Console | None = None,
              progress: Progress | None = None) -> Runtime:
    """Seed (idempotently) and return an open Runtime for the demo data dir."""
    console = console or Console(stderr=True)
    _write_config(settings.data_dir)
    # Reload so the demo config file is honoured (flags and env still win).
    settings = load_settings(settings.data_dir, **{
        k: getattr(settings, k) for k in ("host", "port", "dicom_port") if k in settings.model_fields_set
    })
    rt = Runtime.open(settings)
    with rt.db.session() as s:
        if not s.scalar(select(func.count()).select_from(Site)):
            for info in DEMO_SITES:
                tz, jurisdiction, kind = SITE_DETAILS[info.code]
                create_site(s, info.code, info.institution_name, timezone=tz, jurisdiction=jurisdiction,
                            kind=kind, institution_names=[info.institution_name],
                            issuer_of_patient_id=info.issuer_of_patient_id)
        sites = {site.code: site.id for site in s.scalars(select(Site))}
        for username, password, role, full_name, site in DEMO_USERS:
            if get_user(s, username) is None:
                user = create_user(s, username, password=password, role=role, full_name=full_name,
                                   site_id=sites.get(site))
                user.physician_name = DEMO_PHYSICIAN_NAMES.get(username, "")
        for username, (tz, subs, licences, creds) in DEMO_READERS.items():
            if get_reader(s, username) is None:
                set_reader(s, username, home_site=creds[0], timezone=tz, subspecialties=subs,
                           shifts=["Mon-Sun 00:00-23:59"], licences=dict.fromkeys(licences),
                           credentials=dict.fromkeys(creds))
        admin = get_user(s, "admin")
        assert admin is not None
        _, token = create_token(s, admin, name="demo")
        n_existing = s.scalar(select(func.count()).select_from(Study)) or 0
    rt.invalidate()
    source = settings.data_dir / "demo-source"
    if n_existing == 0 and n_studies > 0:
        console.print(f"Generating {n_studies} synthetic studies ...")
        files = write_demo_dataset(source, n_studies=n_studies, seed=0)
        items = [Item(path, None, path.stat().st_size) for path in files]
        if progress is not None:
            with progress:
                task = progress.add_task("Importing demo studies", total=len(items))
                report = import_items(rt, items, actor="demo",
                                      progress=lambda _i, _r: progress.advance(task))
        else:
            report = import_items(rt, items, actor="demo")
        console.print(f"Imported {report.stored} instances ({len(report.skipped)} skipped).")
    _print_welcome(console, rt.settings, token, source)
    return rt


def _print_welcome(console: Console, settings: Settings, token: str, source: Path) -> None:
    base = settings.base_url
    sample = next(iter(sorted(source.rglob("*.dcm"))), None) if source.exists() else None
    sample_dir = shlex.quote(str(sample.parent)) if sample else "<folder of .dcm files>"
    console.print(f"""
[bold green]ReadingRoom demo is ready[/bold green]  (data dir: {settings.data_dir})

  Web / API docs   {base}/docs
  DICOMweb         {base}/dicomweb      (QIDO-RS, WADO-RS, STOW-RS)
  REST API         {base}/api/v1
  DICOM            AE title {settings.aet} on {settings.host}:{settings.dicom_port}

  Users            admin / admin, rad.chen / demo, rad.osei / demo, tech.walsh / demo
  Bearer token     {token}

  Try:
    curl -H "Authorization: Bearer {token}" {base}/dicomweb/studies
    curl -u rad.chen:demo {base}/api/v1/worklist      # cases appear once studies are complete
    TCP_NODELAY=1 storescu -aet MODALITY -aec {settings.aet} 127.0.0.1 {settings.dicom_port} +sd {sample_dir}
    findscu -aet MODALITY -aec {settings.aet} -S -k QueryRetrieveLevel=STUDY -k PatientName='*' \\
        127.0.0.1 {settings.dicom_port}
""", soft_wrap=True)
