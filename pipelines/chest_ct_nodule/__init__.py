"""The chest-ct-nodule pipeline: 3D lung-nodule detection, then AIS / MIA / IAC with tumour markers and notes."""
