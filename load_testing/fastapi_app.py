"""The plain alternative for the benchmark: the same model behind a minimal FastAPI app on uvicorn.

What a user might write instead of our service: no traces, no metrics, no input checks beyond
pydantic's. `MODEL_PATH` is the pickled pipeline (saved_model.pkl in the BentoML model folder).

    MODEL_PATH=... uvicorn fastapi_app:app --app-dir load_testing --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import os

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

from newsgroups_classifier.model import tokenize

pipeline = joblib.load(os.environ["MODEL_PATH"])
classes = [str(label) for label in pipeline.classes_]
app = FastAPI()


class Query(BaseModel):
    text: str


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]


@app.post("/predict")
def predict(query: Query) -> Prediction:  # sync: FastAPI runs it in its thread pool, as BentoML does
    row = pipeline.predict_proba([tokenize(query.text)])[0]
    best = int(row.argmax())
    return Prediction(
        label=classes[best],
        confidence=float(row[best]),
        probabilities={label: float(p) for label, p in zip(classes, row, strict=True)},
    )


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
