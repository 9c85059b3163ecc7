"""Species names as people read them (``hf_model.data.natural_case``), and birds.csv classes that must stay apart."""


import pytest
from conftest import write_birds

from hf_model.data import build_dataset, natural_case

HALVES = [0.5, 0.25, 0.25]


@pytest.mark.parametrize(("kaggle", "natural"), [
    ("TIT (GREAT)", "Tit (Great)"),  # the word inside the bracket, not the bracket, takes the capital
    ('"SNOWY" OWL', '"Snowy" Owl'),
    ("CROW/RAVEN", "Crow/Raven"),
    ("O'BRIEN'S WARBLER", "O'Brien's Warbler"),  # after a single letter an apostrophe keeps the capital, like D-
    ("D'ARNAUD'S BARBET", "D'Arnaud's Barbet"),
    ("SPECIES II", "Species II"),  # roman numerals stay capitals
    ("LOUIS XIV PHEASANT", "Louis XIV Pheasant"),
    ("MIX CIVIL VIVID", "Mix Civil Vivid"),  # words of roman-numeral letters are still words
    ("MCKAYS BUNTING", "Mckays Bunting"),  # as models trained on the Kaggle species name it
    ("3-TOED WOODPECKER", "3-Toed Woodpecker"),
    ("ÉMEU DU SUD", "Émeu du Sud"),
])
def test_natural_case_capitalizes_the_letters_people_do(kaggle, natural):
    assert natural_case(kaggle) == natural


def test_species_differing_only_in_case_stay_two_classes_named_as_birds_csv_writes_them(tmp_path):
    root = write_birds(tmp_path / "birds", dict.fromkeys(["AMERICAN GOLDFINCH", "American Goldfinch", "JAY"], 4))
    data = build_dataset(str(root), split_fractions=HALVES)
    assert data["train"].features["label"].names == ["AMERICAN GOLDFINCH", "American Goldfinch", "Jay"]
    labels = [label for split in ("train", "validation", "test") for label in data[split]["label"]]
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4


def test_a_published_birds_dataset_with_such_species_keeps_their_names_and_ids(tmp_path):
    from hf_model.hub import load_dataset_to_publish

    root = write_birds(tmp_path / "birds", dict.fromkeys(["AMERICAN GOLDFINCH", "American Goldfinch", "JAY"], 4))
    trained_on = build_dataset(str(root), split_fractions=HALVES)
    published, _ = load_dataset_to_publish(str(root), None, HALVES)
    assert published["train"].features["label"].names == ["AMERICAN GOLDFINCH", "American Goldfinch", "JAY"]
    assert published["train"]["label"] == trained_on["train"]["label"]
