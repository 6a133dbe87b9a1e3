"""Idiomatic Keras 3: a `Sequential` of `Dense` layers, `compile` with Adam + CosineDecay, `fit`.

`--backend tensorflow|jax` picks the Keras backend. The training set is trimmed to whole batches
(429 x 128) so each epoch does the same steps as the others; Keras shuffles it every epoch.
"""

from __future__ import annotations

import argparse
import os
import time

from common import EpochLog, add_epochs_option, load_data, workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    add_epochs_option(parser)
    args = parser.parse_args()
    backend = args.backend
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    w, data = workload(args.epochs), load_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)),
                              *[keras.layers.Dense(h, activation="relu") for h in w.hidden],
                              keras.layers.Dense(10)])
    schedule = keras.optimizers.schedules.CosineDecay(w.learning_rate, w.total_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    n = w.steps_per_epoch * w.batch_size
    log = EpochLog(f"Keras 3 model.fit ({'TF' if backend == 'tensorflow' else 'JAX'})")

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            logits = keras.ops.convert_to_numpy(self.model(data.test_images, training=False))
            log.epoch(seconds, float((logits.argmax(1) == data.test_labels).mean()))

    model.fit(data.train_images[:n], data.train_labels[:n], batch_size=w.batch_size,
              epochs=w.epochs, shuffle=True, verbose=0, callbacks=[EpochTimer()])
    log.report(n)


if __name__ == "__main__":
    main()
