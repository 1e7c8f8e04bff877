"""The page's editor layer: atlas rows carry the directions' names once they have been computed."""

from backend.service import EigenfaceService, ServiceConfig, name_by_factor
from ui.editor import Editor


def test_atlas_rows_show_names_once_computed(tiny_ddpm_dir, tmp_path):
    service = EigenfaceService(ServiceConfig(models={"tiny": str(tiny_ddpm_dir)}, device="cpu", labellers={"tiny": name_by_factor}))
    editor = Editor(service, tmp_path)
    state = editor.state("tiny", "", 1, 0.6, 2, 6)
    found = editor.discover(state)

    plain = editor.atlas(found, "direct", 0.5)
    assert editor.atlas(found, "direct", 0.5) is plain  # cached
    names = editor.labels(state)
    named = editor.atlas(found, "direct", 0.5)
    assert named is not plain  # names invalidate the cached atlas
    # the rows are the same edits; only the label margin grows to fit "0: <name>  σ=..."
    assert named.height == plain.height and named.width >= plain.width
    assert len(names) == 2
