"""Judging a bundle on image folders: datasets, replay, line conditions, reports."""
