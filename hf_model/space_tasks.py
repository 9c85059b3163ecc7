"""The Space's tabs: what each classifies, where its model comes from, how many examples it shows.

``space/app.py`` builds one tab and one endpoint per task; ``hf_model.hub`` derives the publish
flags (``--bedroom_model``), the Space variables (``BEDROOM_MODEL``) and the example folders
(``examples/bedroom/``) from the same list. Runtime dependencies only: the Space imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_model.config import TOP_K

MAX_EXAMPLES = 8  # example photos per tab


@dataclass(frozen=True)
class Task:
    """One tab: what it classifies, where its model comes from, how its answer reads."""

    key: str  # names the env var (BEDROOM_MODEL), the flag (--bedroom_model) and the endpoint (/predict_bedroom)
    title: str
    subject: str  # what an in-domain photo shows, for the sentences
    rejection_label: str  # the label shown instead of a class when the photo is out of domain
    hub_id: str  # the model we publish; the default
    local_fallback: str  # a model folder under the repository root, used when the Hub is out of reach
    top_k: int
    about: str

    @property
    def api_name(self) -> str:
        return f"predict_{self.key}"

    @property
    def env_var(self) -> str:
        return f"{self.key.upper()}_MODEL"

    @property
    def flag(self) -> str:
        """The command-line option naming this task's model (without the leading ``--``)."""
        return f"{self.key}_model"


TASKS = (
    Task(
        key="bedroom",
        title="Bedroom style",
        subject="a bedroom",
        rejection_label="Not a bedroom",
        hub_id="hf-model-demo/bedroom-style",
        local_fallback="runs/bedrooms",
        top_k=2,  # both classes
        about="Is this bedroom **Modern** or **Old**-fashioned? Upload, paste or take a photo of a bedroom.",
    ),
    Task(
        key="bird",
        title="Bird species",
        subject="a bird",
        rejection_label="Not a bird",
        hub_id="hf-model-demo/bird-species",
        local_fallback="runs/birds",
        top_k=TOP_K,
        about="Which of 525 bird species is this? Upload, paste or take a photo of one bird.",
    ),
)
