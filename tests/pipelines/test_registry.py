"""pipelines.registry: dispatch on captures.source, clear errors for unknown / not-yet-available sources."""
import pytest
from writers import Scene, make_cameras, write_colmap, write_folder, write_transforms

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.registry import SOURCES, import_capture


@pytest.mark.parametrize("source,writer", [("folder", write_folder), ("transforms_json", write_transforms),
                                           ("colmap", lambda root, scene: write_colmap(root, scene, binary=True))])
def test_dispatch(tmp_path, source, writer):
    writer(tmp_path / "raw", Scene(make_cameras(2)))
    report = import_capture(source, tmp_path / "raw", tmp_path / "cap", ImportConfig(split_fractions=[0, 1, 0]))
    cap = load_capture(tmp_path / "cap")
    assert report.source == source == cap.info["source"] and set(cap.manifest.source) == {source}
    assert set(cap.manifest.split) == {"val"} and cap.info["splits"] == report.splits


def test_errors(tmp_path):
    assert set(SOURCES) == {"synthetic", "nersemble", "renderme360", "colmap", "transforms_json", "folder"}
    with pytest.raises(CaptureError, match="unknown source 'blender'"):
        import_capture("blender", tmp_path, tmp_path / "cap")
    with pytest.raises(CaptureError, match="'synthetic' renders captures"):
        import_capture("synthetic", tmp_path, tmp_path / "cap")
    with pytest.raises(CaptureError, match="captures.root: .*nope does not exist"):
        import_capture("colmap", tmp_path / "nope", tmp_path / "cap")
