"""Adapter → GGUF → Ollama: conversion, registration, evaluation gate, switch, rollback, retention."""
