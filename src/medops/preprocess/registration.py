"""Rigid multi-modal registration of MRI onto the US reference (SimpleITK)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def register_rigid(fixed: np.ndarray, moving: np.ndarray, iterations: int = 80,
                   shrink: tuple[int, ...] = (4, 2, 1), seed: int = 1) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Register ``moving`` onto ``fixed`` with Mattes mutual information.

    Returns the moving image resampled on the fixed grid and the Euler-2D
    parameters (angle rad, tx, ty) of the fixed->moving transform (pixel units,
    rotation about the image centre).
    """
    f = sitk.GetImageFromArray(fixed.astype(np.float32))
    m = sitk.GetImageFromArray(moving.astype(np.float32))
    init = sitk.CenteredTransformInitializer(f, m, sitk.Euler2DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) * 1.0 for s in shrink])
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(f, m)
    out = sitk.Resample(m, f, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    euler = sitk.Euler2DTransform(sitk.CompositeTransform(tx).GetNthTransform(0))
    angle, tx_, ty_ = euler.GetParameters()
    centre = euler.GetCenter()
    # re-express about the image centre so the parameters are comparable with the truth
    c = ((fixed.shape[1] - 1) / 2.0, (fixed.shape[0] - 1) / 2.0)
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = np.array(centre) + np.array([tx_, ty_]) - R @ np.array(centre)  # x' = R x + t
    t_c = t - (np.array(c) - R @ np.array(c))
    return sitk.GetArrayFromImage(out), (float(angle), float(t_c[0]), float(t_c[1]))


def euler_matrix(angle: float, tx: float, ty: float, n: int) -> np.ndarray:
    """3x3 homogeneous matrix of a rotation about the centre of an n x n grid, then a shift."""
    c = (n - 1) / 2.0
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = np.array([c, c]) - R @ np.array([c, c]) + np.array([tx, ty])
    M = np.eye(3)
    M[:2, :2], M[:2, 2] = R, t
    return M


def mean_displacement(M1: np.ndarray, M2: np.ndarray, n: int, step: int = 8) -> float:
    """Mean distance (pixels) between where two transforms send the grid points."""
    ys, xs = np.mgrid[0:n:step, 0:n:step]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    return float(np.linalg.norm((M1 @ pts - M2 @ pts)[:2], axis=0).mean())
