"""The radiograph-lesion pipeline: 2D detect-then-classify of bone lesions on extremity radiographs."""
