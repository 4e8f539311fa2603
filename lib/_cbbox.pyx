# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled box kernels used by ``lib.bbox`` (project box convention: x2/y2 exclusive, no +1)."""
import numpy as np

cimport numpy as cnp
from cython cimport floating

cnp.import_array()


def box_iou(floating[:, ::1] boxes_a, floating[:, ::1] boxes_b):
    """IoU matrix (N, M) of corner boxes, in the dtype of the inputs (float32 or float64).

    A pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    cdef Py_ssize_t n = boxes_a.shape[0], m = boxes_b.shape[0], i, j
    if boxes_a.shape[1] != 4 or boxes_b.shape[1] != 4:
        raise ValueError("box_iou expects (N,4) and (M,4) boxes, got (%d,%d) and (%d,%d)"
                         % (boxes_a.shape[0], boxes_a.shape[1], boxes_b.shape[0], boxes_b.shape[1]))
    dtype = np.float32 if floating is float else np.float64
    out_arr = np.zeros((n, m), dtype=dtype)
    if n == 0 or m == 0:
        return out_arr
    cdef floating[:, ::1] out = out_arr
    area_b_arr = np.empty(m, dtype=dtype)
    cdef floating[::1] area_b = area_b_arr
    cdef floating ax1, ay1, ax2, ay2, area_a, iw, ih, inter, union
    with nogil:
        for j in range(m):
            area_b[j] = (boxes_b[j, 2] - boxes_b[j, 0]) * (boxes_b[j, 3] - boxes_b[j, 1])
        for i in range(n):
            ax1 = boxes_a[i, 0]
            ay1 = boxes_a[i, 1]
            ax2 = boxes_a[i, 2]
            ay2 = boxes_a[i, 3]
            area_a = (ax2 - ax1) * (ay2 - ay1)
            for j in range(m):
                iw = (ax2 if ax2 < boxes_b[j, 2] else boxes_b[j, 2]) - \
                     (ax1 if ax1 > boxes_b[j, 0] else boxes_b[j, 0])
                if iw <= 0:
                    continue
                ih = (ay2 if ay2 < boxes_b[j, 3] else boxes_b[j, 3]) - \
                     (ay1 if ay1 > boxes_b[j, 1] else boxes_b[j, 1])
                if ih <= 0:
                    continue
                inter = iw * ih
                union = area_a + area_b[j] - inter
                if union > 0:
                    out[i, j] = inter / union
    return out_arr
