"""COCO: conversion of detections to COCO results, evaluation with pycocotools, the resumable
prediction store and the resumable evaluation run."""
