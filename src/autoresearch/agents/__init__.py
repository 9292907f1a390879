"""Agents propose changes to the workspace's editable files."""
