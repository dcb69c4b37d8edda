"""Offline bulk work on the core API: whole folders of images (:mod:`.folder`) and videos (:mod:`.video`).

Both take a loaded ``Segmenter``; the ``editseg segment`` and ``editseg video`` commands are thin
wrappers around :func:`.folder.segment_folder` and :func:`.video.segment_video`.
"""
