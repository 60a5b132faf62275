"""Processed data: record schema, index, readers, sampling, collation, dataset builders."""
