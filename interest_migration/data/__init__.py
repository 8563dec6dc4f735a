"""Converters from raw shop logs to RecBole atomic files.

Each source module (:mod:`.taobao`, :mod:`.amazon`, :mod:`.diginetica`, :mod:`.csv`) only parses its
source; reading delimited text (:mod:`.delimited`), checking field values (:mod:`.fields`), the
optional cleaning steps and drop accounting (:mod:`.cleaning`) and writing the dataset folder
(:mod:`.pipeline`, :mod:`.atomic`, :mod:`.manifest`) are shared.
"""
