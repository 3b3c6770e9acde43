"""The dataset and its store: examples, ratings, feedback, snapshots, formats, model versions."""
