import base64
import io

from PIL import Image

from client import gallery


def test_a_report_keeps_the_original_size_of_a_shrunk_picture_so_boxes_land_right(tmp_path):
    """Boxes are in original pixels; the embedded picture is shrunk to QUERY_SIDE, so the page must scale
    boxes by the original size it is given, not by the shrunk image's."""
    photo = Image.new("RGB", (2 * gallery.QUERY_SIDE, gallery.QUERY_SIDE), "white")
    report = {"image": "big.jpg", "objects": [{"box": [1500.0, 100.0, 1900.0, 500.0], "score": 0.9, "category": "c",
                                               "fine_class": "f", "whole_image": False, "valid": True, "results": []}]}
    page = gallery.write_report(tmp_path / "r.html", report, {"query": photo}).read_text()
    data = gallery.embedded(page)
    assert data["sizes"]["query"] == [2 * gallery.QUERY_SIDE, gallery.QUERY_SIDE]
    shown = Image.open(io.BytesIO(base64.b64decode(data["images"]["query"].split(",", 1)[1])))
    assert shown.width == gallery.QUERY_SIDE  # shrunk: naturalWidth alone would put the box off the picture
    assert "size(\"query\")" in page and "d.sizes[k]" in page
