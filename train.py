"""Retrain an image classifier: ``python train.py --preset bedrooms --data_dir ... --output_dir ...``.

All options: ``python train.py --help`` (ours first, then every ``TrainingArguments`` flag).
"""

from hf_model.training import main

if __name__ == "__main__":
    main()
