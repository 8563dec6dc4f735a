"""Online serving: recommendations that react to every event, over HTTP or in process.

* :mod:`~interest_migration.serving.online`: :class:`OnlineRecommender`, per-user histories
  updated with every event and scored by a trained model, no retraining;
* :mod:`~interest_migration.serving.event_log`: the append-only log that makes an
  acknowledged event survive a crash;
* :mod:`~interest_migration.serving.http`: the ``serve`` command.

Importing this package imports nothing heavy; the submodules load torch and RecBole.
"""
