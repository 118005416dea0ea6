"""OncoPlan's shipped MONAI bundles, installed as package data (`oncoplan.bundles`): one folder per model,
each with configs/, models/ and docs/. Found by :func:`oncoplan.runtime.bundles.shipped_bundles`."""
