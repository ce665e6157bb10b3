"""The clip: one vehicle upload, its table and metadata, and the formats it travels in."""

from onshore.clips.schema import OBJECT_CLASSES, SCHEMA, TRIGGERS, Clip, ClipMeta

__all__ = ["OBJECT_CLASSES", "SCHEMA", "TRIGGERS", "Clip", "ClipMeta"]
