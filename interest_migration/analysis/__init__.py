"""Measure how shoppers' interests move between item categories.

Each module holds one concept: :mod:`.timelines` (per-user category sequences), :mod:`.drift`
(per-user drift measures), :mod:`.transitions` (population migration), :mod:`.shift_points`
(change-point detection), :mod:`.simulate` (synthetic migration with known shift points),
:mod:`.calibration` (is a model's ``p_shift`` right?), :mod:`.plots` and :mod:`.report`
(the ``analyze`` command). Import the module you need; nothing is imported here.
"""
