"""`saelign dashboard`: a labels file (+ optionally the SAE it labels, a SAILS run and an AlignSAE slot map)
-> the static site of `dashboard.site`. Every input is checked before anything is written."""

from dataclasses import dataclass
from pathlib import Path

from saelign.configs import help_field
from saelign.dashboard.site import FeatureInfo, write_site
from saelign.errors import SaelignError
from saelign.io import read_json
from saelign.label.describe import attach_readings
from saelign.label.labels import labels_path, load_labels
from saelign.label.reading import check_labels_file, load_readings

SAILS_READINGS = "describe/readings.json"


@dataclass
class DashboardConfig:
    labels: str = help_field("", "labels file (saelign label, the SAILS labels stage); default "
                                 "SAE_DIR/labels.json")
    sae: str = help_field("", "the SAE the labels belong to; checked against the labels file's width, hash")
    sails_run: str = help_field("", "a SAILS run folder: tags the selected features and those adapters "
                                    "moved, adds the readings of its describe stage")
    slot_map: str = help_field("", "an AlignSAE slot_map.json (or its folder): the concept each slot carries")
    out: str = help_field("", "output folder (default: 'dashboard' beside the labels file)")
    title: str = help_field("SAE features", "page title")


def sails_tags(run_dir: Path) -> dict[int, list[str]]:
    """{latent: tags}: 'selected' (select/selection.json), '<method> up|down on <kind>' (effect/*.json) and
    '<method> answers up|down on <kind>' (answers/*.json)."""
    selection = run_dir / "select" / "selection.json"
    if not selection.is_file():
        raise SaelignError(f"--sails-run {run_dir}: no select/selection.json; run the SAILS select stage")
    tags: dict[int, list[str]] = {}
    for latent in read_json(selection, "SAILS selection")["selection"]["latent_ids"]:
        tags.setdefault(int(latent), []).append("selected")
    for folder, where in (("effect", ""), ("answers", " answers")):
        for path in sorted((run_dir / folder).glob("*.json")):
            for kind, ways in read_json(path, f"SAILS {folder}").get("top", {}).items():
                for way, rows in ways.items():
                    for row in rows:
                        tags.setdefault(int(row["latent"]), []).append(f"{path.stem}{where} {way} on {kind}")
    return tags


def _concepts(path: str) -> dict[int, str]:
    from saelign.align.slots import load_slot_map

    slot_map = load_slot_map(path)
    return dict(zip(slot_map.slots, slot_map.concepts, strict=True))


def build_dashboard(cfg: DashboardConfig) -> Path:
    if not cfg.labels and not cfg.sae:
        raise SaelignError("give --labels FILE or --sae DIR (whose labels.json is used)")
    path = Path(cfg.labels) if cfg.labels else labels_path(cfg.sae)
    if not path.is_file():
        raise SaelignError(f"--labels {path}: no such file; create it with `saelign label`")
    labels = load_labels(path)
    if not labels:
        raise SaelignError(f"--labels {path} holds no labelled features")
    if cfg.sae:
        from saelign.sae.formats import load_sae

        sae = load_sae(cfg.sae)
        check_labels_file(path, sae)
        outside = [i for i in labels if not 0 <= i < sae.d_sae]
        if outside:
            raise SaelignError(f"--labels {path}: feature ids {outside[:5]} are out of range for --sae "
                               f"{cfg.sae} (d_sae {sae.d_sae})")
    tags = sails_tags(Path(cfg.sails_run)) if cfg.sails_run else {}
    readings = Path(cfg.sails_run, SAILS_READINGS) if cfg.sails_run else None
    if readings is not None and readings.is_file():  # the SAILS describe stage's, for features it described
        attach_readings(labels, load_readings(readings))
    concepts = _concepts(cfg.slot_map) if cfg.slot_map else {}
    infos = {i: FeatureInfo(tags.get(i, []), concepts.get(i, "")) for i in labels}
    return write_site(labels, Path(cfg.out) if cfg.out else path.parent / "dashboard", cfg.title, infos)
