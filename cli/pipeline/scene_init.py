"""A scene from a video: camera and cloth pose from the first frame (``dreamcloth scene init``).

The cloth starts flat and at rest as a rectangle of known size.  From frame 0:

1. its silhouette: the pixels that differ from the background colour (the median of the image's
   border, or a mask video), the largest connected region, holes filled;
2. its four corners: the silhouette's convex hull; its diameter is one diagonal of the
   quadrilateral, the hull points farthest from that diagonal on either side are the other two
   corners;
3. a first camera from the plane-to-image homography of the corners (4-point DLT, Hartley and
   Zisserman, "Multiple View Geometry", 2nd ed., 4.1): with square pixels and the principal point
   at the image centre, the columns h1, h2 of K^-1 H are the plane's axes scaled alike and
   orthogonal, which gives the focal length when ``fov`` is not given (Zhang 2000, "A flexible new
   technique for camera calibration", section 2.3), then the rotation and translation;
4. the pose refined by differentiable rendering: the scene's own Gaussian renderer draws the flat
   cloth, and Adam moves a rigid motion of the cloth in the camera frame to match the silhouette,
   blurred then sharp (``refine_camera``: a wide basin, but only to a pixel or so);
5. the pose, and the field of view when ``fov`` is not given, fitted to the edges' sub-pixel
   positions: the frame's alpha (its colour between background and cloth) near the silhouette's
   edge against the rectangle's projection blurred across its sides, with the blur and a gain free
   (``fit_edges``).  On 12 views of the demo's checkered 12x12 cloth rendered by ``dreamcloth
   simulate`` from random cameras (320x240 H.264) the fov came within 1.0 deg and the camera within
   2.4% of its distance (``rendered_iou`` says why the rendered cloth no longer refines it); the pose
   refined on the silhouette alone had been 0.3-2.2% off even with the fov given.

The cloth's plane is taken as horizontal (its normal is "up"): the cloth lies on the ground or is
held level, as in a drop.  ``height`` says how far above the ground plane it is (a single flat view
cannot tell; 0: it lies on the ground).  The scene puts the cloth axis-aligned in the middle of the
domain and carries the estimated pose in its camera.  A rectangle's silhouette is symmetric, so the
camera is found up to the half-turn (quarter-turn for a square) about the cloth's normal; pins and
textures that break the symmetry are the user's to add.

Any other flat shape comes as a mesh file (``--mesh``, ``estimate_shape_scene``): the mesh is laid
flat (its best plane turned to the ground, either side up), first cameras come from matching the
silhouette's area moments to the shape's (an affine map, up to a turn or a mirror turn: searched)
turned into weak-perspective poses, each is laid on the silhouette's edge by a chamfer fit
(``fit_contour``, a wide basin), the best distinct poses of each side up are fitted to the edges
with the outline's signed distance in place of the rectangle's sides (``fit_outline``; the fov too
when it is not given), and the rendered mesh's IoU picks.

Everything a user can get wrong is an ``InputError`` naming the video: no cloth-like region in
frame 0, a cloth that is not a flat rectangle there, a size whose aspect the image contradicts.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

#: Refined silhouette IoU below which frame 0 does not show a flat rectangle of the given size (lower
#: for small silhouettes, where a pixel along the edge costs more).
MIN_FLAT_IOU = 0.93
#: Relative disagreement between the given aspect ratio and the one the corners show.
MAX_ASPECT_ERROR = 0.3
#: The estimation runs at most at this many pixels along the longer image side.
MAX_ESTIMATION_SIDE = 480
#: Where the ground plane sits in the written scene (y, m) and how far below the domain's top the cloth may start.
GROUND_Y = 0.05


@dataclasses.dataclass(frozen=True)
class CameraEstimate:
    """The camera relative to a cloth centred at the origin, lying in the x-z plane (normal +y)."""

    rotation: np.ndarray  # [3, 3] world -> camera (rows: right, down, forward)
    translation: np.ndarray  # [3], x_cam = R x_world + t
    fov_y_deg: float
    width: int
    height: int

    @property
    def eye(self) -> np.ndarray:
        return -self.rotation.T @ self.translation

    def shifted(self, offset) -> "CameraEstimate":
        """The same view of the cloth moved by ``offset`` in the world."""
        off = np.asarray(offset, dtype=np.float64)
        return dataclasses.replace(self, translation=self.translation - self.rotation @ off)

    def as_camera(self, width: int | None = None, height: int | None = None):
        """A ``render.Camera`` (optionally at another resolution with the same field of view)."""
        from dreamcloth import render as R

        eye = self.eye
        forward, down = self.rotation[2], self.rotation[1]
        distance = float(np.linalg.norm(self.translation))
        return R.Camera(eye=tuple(eye), look_at=tuple(eye + forward * distance), up=tuple(-down), fov_y_deg=self.fov_y_deg,
                        width=width or self.width, height=height or self.height)


@dataclasses.dataclass(frozen=True)
class SceneEstimate:
    camera: CameraEstimate  # relative to the cloth centred at the origin
    corners_px: np.ndarray  # [4, 2] the silhouette's corners found in frame 0 (estimation resolution)
    fov_given: bool
    silhouette_iou: float  # rendered flat cloth vs frame 0's silhouette after refinement
    aspect_seen: float  # width / height the corners show (with the estimated focal length)
    background: tuple[float, float, float]
    background_uniform: bool
    cloth_color: tuple[float, float, float]
    shape: "FlatShape | None" = None  # the cloth, when it came from a mesh file (else a rectangle)

    @property
    def elevation_deg(self) -> float:
        """The camera's angle above the cloth's plane, seen from the cloth's centre."""
        e = self.camera.eye
        return math.degrees(math.asin(e[1] / np.linalg.norm(e)))

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.camera.eye))


# -- the silhouette and its corners ------------------------------------------------------------------


def border_colour(frame: np.ndarray) -> tuple[np.ndarray, bool]:
    """Median colour of the image's 2-pixel border ``[3]`` in [0, 1], and whether the border is one flat colour."""
    f = frame.astype(np.float64) / 255.0
    border = np.concatenate([f[:2].reshape(-1, 3), f[-2:].reshape(-1, 3), f[:, :2].reshape(-1, 3), f[:, -2:].reshape(-1, 3)])
    med = np.median(border, axis=0)
    spread = np.quantile(np.abs(border - med).max(1), 0.9)
    return med, bool(spread < 0.06)


def cloth_silhouette(frame: np.ndarray, background: np.ndarray | None = None, mask: np.ndarray | None = None,
                     threshold: float = 0.08) -> np.ndarray:
    """``[H, W]`` bool: the largest connected region that differs from ``background`` (or of ``mask``), holes filled.

    Cut from the background colour, the region's edge is then placed where the pixels are half
    cloth, half background (their colour projected on the line from the background to the
    cloth's median colour), not where they first differ from the background: the lens and the
    codec blur the edge over a pixel or two, and a low threshold would make the cloth fatter.
    """
    from scipy import ndimage

    def largest(m):
        labels, n = ndimage.label(m)
        if n == 0:
            return np.zeros(m.shape, bool)
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))

    if mask is not None:
        return largest(mask)
    f = frame.astype(np.float64) / 255.0
    bg = np.asarray(background, dtype=np.float64)
    region = largest(np.abs(f - bg).max(-1) > threshold)
    inner = ndimage.binary_erosion(region, iterations=2)
    if not inner.any():
        return region
    d = np.median(f[inner], axis=0) - bg
    # Luma when it separates cloth and background: video codecs keep it at full resolution and
    # halve the colour's (4:2:0), which blurs colour edges over two pixels.
    luma = np.array([0.299, 0.587, 0.114])
    if abs(float(d @ luma)) >= 0.1:
        alpha = ((f - bg) @ luma) / float(d @ luma)
    elif float(d @ d) >= 0.15**2:
        alpha = ((f - bg) @ d) / float(d @ d)
    else:
        return region
    band = ndimage.binary_dilation(region, iterations=2) & ~inner
    return largest(np.where(band, alpha > 0.5, region))


def quad_corners(silhouette: np.ndarray) -> np.ndarray:
    """Four corners ``[4, 2]`` (x right, y down; pixel centres at integers) of a quadrilateral
    silhouette, in order around it: the largest-area quadrilateral on its convex hull."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(silhouette)
    # Each pixel as its four corners: the hull then hugs the region's outer edge, not its pixel centres.
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]).astype(np.float64)
    hull = pts[ConvexHull(pts).vertices]  # counter-clockwise in (x, y)
    n = len(hull)
    if n < 4:
        raise ValueError("the silhouette has fewer than four corners")
    idx = np.arange(n)
    upper = idx[:, None] < idx[None, :]
    best, quad = -1.0, None
    for i in range(n):
        # Hull points in order starting at i, relative to point i: cross[j, k] is twice the area of (i, j, k).
        p = np.roll(hull, -i, axis=0) - hull[i]
        cross = p[:, None, 0] * p[None, :, 1] - p[:, None, 1] * p[None, :, 0]
        first = np.where(upper, cross, -np.inf)  # (i, j, k), j < k
        j_best = first.argmax(0)  # for each k, the best j before it
        a1 = first.max(0)
        a2 = np.where(upper, cross, -np.inf).max(1)  # for each k, the best l after it: (i, k, l)
        l_best = np.where(upper, cross, -np.inf).argmax(1)
        total = a1 + a2
        total[:2] = -np.inf
        total[-1] = -np.inf
        k = int(np.argmax(total))
        if total[k] > best:
            best = float(total[k])
            quad = np.stack([hull[i], hull[(i + j_best[k]) % n], hull[(i + k) % n], hull[(i + l_best[k]) % n]])
    return quad


def refine_corners(silhouette: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Corners ``[4, 2]`` as the intersections of lines fitted (total least squares) to the
    silhouette's edge pixels along each side of ``quad``, away from the corners, which blur rounds off."""
    from scipy import ndimage

    edge = silhouette & ~ndimage.binary_erosion(silhouette)
    ys, xs = np.nonzero(edge)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    centre = quad.mean(0)
    lines = []
    for q in range(4):
        a, b = quad[q], quad[(q + 1) % 4]
        ab = b - a
        length = float(np.linalg.norm(ab))
        s = (pts - a) @ ab / (length * length)
        normal = np.array([-ab[1], ab[0]]) / length
        if normal @ (centre - a) > 0:
            normal = -normal  # outward
        dist = (pts - a) @ normal
        near = (s > 0.2) & (s < 0.8) & (np.abs(dist) < max(2.0, 0.05 * length))
        if near.sum() < 4:
            return quad
        p = pts[near]
        mean = p.mean(0)
        direction = np.linalg.svd(p - mean)[2][0]
        n = np.array([-direction[1], direction[0]])
        if n @ normal < 0:
            n = -n
        # Edge pixels' centres lie half a pixel inside the edge.
        lines.append((n, n @ mean + 0.5))
    out = []
    for q in range(4):
        (n1, c1), (n2, c2) = lines[q - 1], lines[q]
        m = np.stack([n1, n2])
        if abs(np.linalg.det(m)) < 1e-6:
            return quad
        out.append(np.linalg.solve(m, np.array([c1, c2])))
    out = np.asarray(out)
    # Keep the fit only where it stays close to the hull's corners (a region that is not a quadrilateral is rejected later).
    return out if np.abs(out - quad).max() < 0.25 * np.linalg.norm(quad[2] - quad[0]) else quad


def polygon_area(p: np.ndarray) -> float:
    return 0.5 * abs(sum(p[q, 0] * p[(q + 1) % len(p), 1] - p[(q + 1) % len(p), 0] * p[q, 1] for q in range(len(p))))


# -- the camera from the corners ------------------------------------------------------------------------


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``H [3, 3]`` with ``dst ~ H src`` from 4 (or more) point pairs (DLT, the SVD's null vector)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    return np.linalg.svd(np.asarray(rows))[2][-1].reshape(3, 3)


def focal_from_homography(h: np.ndarray) -> float | None:
    """Focal length (pixels) that makes the homography's first two columns orthogonal and of equal
    length (least squares over the two equations in 1/f^2); None when they do not determine it."""
    a1 = h[0, 0] * h[0, 1] + h[1, 0] * h[1, 1]
    b1 = h[2, 0] * h[2, 1]
    a2 = h[0, 0] ** 2 + h[1, 0] ** 2 - h[0, 1] ** 2 - h[1, 1] ** 2
    b2 = h[2, 0] ** 2 - h[2, 1] ** 2
    den = a1 * a1 + a2 * a2
    if den <= 0:
        return None
    w = -(a1 * b1 + a2 * b2) / den
    return 1.0 / math.sqrt(w) if w > 0 else None


def _pose(h: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray, float]:
    """World -> camera ``R, t`` of the plane (plane coords (a, b) = world (a, 0, b)) and the aspect
    |r1| / |r2| of the unnormalised columns (1 when the plane's coordinates are metric and true)."""
    kinv = np.diag([1.0 / focal, 1.0 / focal, 1.0])
    m = kinv @ h
    n1, n2 = np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1])
    lam = 2.0 / (n1 + n2)
    if m[2, 2] * lam < 0:  # the cloth must lie in front of the camera
        lam = -lam
    r1, r2, t = lam * m[:, 0], lam * m[:, 1], lam * m[:, 2]
    u, _, vt = np.linalg.svd(np.stack([r1, r2, np.cross(r1, r2)], 1))
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        rot = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    r1, r2 = rot[:, 0], rot[:, 1]
    # Columns are the images of world x, y, z: y = the plane's normal r2 x r1 (a proper rotation).
    world_to_cam = np.stack([r1, np.cross(r2, r1), r2], 1)
    return world_to_cam, t, n1 / n2


def initial_cameras(corners: np.ndarray, size: tuple[float, float], width: int, height: int,
                    fov_y_deg: float | None) -> list[tuple[float, CameraEstimate, float]]:
    """Cameras from the silhouette's corners, best first: ``(corner residual px, estimate, aspect seen)``.

    Every assignment of the rectangle's corners to the image's (4 turns, 2 orientations) is tried;
    kept are those that put the cloth in front of the camera with its upper side facing it, sorted
    by how well they reproject the corners.
    """
    w, hgt = size
    plane = np.array([[-w / 2, -hgt / 2], [w / 2, -hgt / 2], [w / 2, hgt / 2], [-w / 2, hgt / 2]])
    cx, cy = (width - 1) * 0.5, (height - 1) * 0.5
    found = []
    for order in (corners, corners[::-1]):
        img_o = order - np.array([cx, cy])
        for shift in range(4):
            q = np.roll(img_o, shift, axis=0)
            h = homography(plane, q)
            if fov_y_deg is None:
                focal = focal_from_homography(h)
                if focal is None:
                    continue
            else:
                focal = height / (2.0 * math.tan(math.radians(fov_y_deg) / 2))
            rot, t, _ = _pose(h, focal)
            normal = rot[:, 1]
            if t[2] <= 0 or normal @ (-t) <= 0:
                continue
            world = np.stack([plane[:, 0], np.zeros(4), plane[:, 1]], 1)
            cam = world @ rot.T + t
            if (cam[:, 2] <= 0).any():
                continue
            proj = focal * cam[:, :2] / cam[:, 2:3]
            err = float(np.sqrt(((proj - q) ** 2).sum(1).mean()))
            # The aspect the image shows: the homography of the unit square, its columns' length ratio.
            unit = homography(np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]), q)
            aspect = _pose(unit, focal)[2]
            fov = math.degrees(2.0 * math.atan(height / (2.0 * focal)))
            found.append((err, CameraEstimate(rot, t, fov, width, height), aspect))
    if not found:
        raise ValueError("no camera puts the cloth's corners where the image shows them (is the cloth seen from above?)")
    return sorted(found, key=lambda c: c[0])


# -- refinement by differentiable rendering -----------------------------------------------------------


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]), torch.stack([-w[1], w[0], z])])


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[H, W]`` image blurred by a Gaussian of ``sigma`` pixels (separable; identity at 0)."""
    if sigma <= 0:
        return image
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = torch.nn.functional.pad(image[None, None], (r, r, r, r), mode="replicate")
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1))[0, 0]


def render_flat_cloth(vertices: torch.Tensor, faces: torch.Tensor, camera, sampling=None) -> torch.Tensor:
    """Alpha ``[H, W]`` of a cloth mesh drawn as the scene renderer draws cloth (differentiable in ``vertices``)."""
    from dreamcloth import render as R

    from .simulation import CLOTH_GAUSSIANS_PER_TRIANGLE, CLOTH_IN_PLANE_SCALE, CLOTH_THICKNESS, DEFAULT_OPACITY

    if sampling is None:
        sampling = R.cloth_sampling(faces, CLOTH_GAUSSIANS_PER_TRIANGLE)
    g = R.cloth_gaussians(vertices, faces, thickness=CLOTH_THICKNESS, sampling=sampling, in_plane_scale=CLOTH_IN_PLANE_SCALE,
                          camera=camera, opacity=DEFAULT_OPACITY)
    n = g.means.shape[0]
    out = R.rasterize(g.means, g.covariances, torch.ones(n, 3, dtype=vertices.dtype), torch.full((n,), DEFAULT_OPACITY, dtype=vertices.dtype),
                      camera, torch.zeros(3, dtype=vertices.dtype))
    return out.alpha[0]


def _flat_mesh(size: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    from dreamcloth import taichi_mpm as M

    verts, faces = M.grid_mesh(9, 9, size)
    return torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces)


def _filled(rendered: np.ndarray) -> np.ndarray:
    """A rendered silhouette with its holes filled, as frame 0's is (up close, the splats of a 9x9 mesh
    leave see-through gaps below alpha 1/2)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(rendered)


def refine_camera(est: CameraEstimate, silhouette: np.ndarray, size: tuple[float, float],
                  iterations: int = 240) -> CameraEstimate:
    """Refine the camera's pose (its field of view fixed) so that the rendered flat cloth matches
    ``silhouette`` (to a pixel or so: ``fit_edges`` takes it from there)."""
    from dreamcloth import render as R

    verts, faces = _flat_mesh(size)
    sampling = R.cloth_sampling(faces, 4)
    cam0 = est.as_camera()
    rot0 = torch.as_tensor(est.rotation, dtype=torch.float32)
    t0 = torch.as_tensor(est.translation, dtype=torch.float32)
    target = torch.as_tensor(silhouette, dtype=torch.float32)
    dist = float(np.linalg.norm(est.translation))
    x_cam0 = verts @ rot0.T + t0
    centre = t0  # the cloth's centre (world origin) in the camera frame
    omega = torch.zeros(3, requires_grad=True)
    shift = torch.zeros(3, requires_grad=True)  # in units of the camera distance
    opt = torch.optim.Adam([omega, shift], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)

    def moved():
        """The cloth moved rigidly in the camera frame, back in the world through the unchanged
        camera (drawn with cam0 it is the cloth seen by the moved camera), and the rotation."""
        rot = torch.linalg.matrix_exp(_skew(omega))
        x_cam = (x_cam0 - centre) @ rot.T + centre + shift * dist
        return (x_cam - t0) @ rot0, rot

    # Coarse to fine: blurred silhouettes first (a wider basin when the corners were a few pixels
    # off), then the sharp ones.
    stages = [(3.0, iterations // 3), (1.0, iterations // 3), (0.0, iterations - 2 * (iterations // 3))]
    for sigma, count in stages:
        blurred = _blur(target, sigma)
        for _ in range(count):
            opt.zero_grad()
            alpha = render_flat_cloth(moved()[0], faces, cam0, sampling)
            loss = ((_blur(alpha, sigma) - blurred) ** 2).mean()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        rot = moved()[1]
        new_rot = (rot @ rot0).double().numpy()
        new_t = ((t0 - centre) @ rot.T + centre + shift * dist).double().numpy()
    return CameraEstimate(new_rot, new_t, est.fov_y_deg, est.width, est.height)


def cloth_alpha(frame: np.ndarray, background: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """``[H, W]`` float: how much of each pixel is cloth, from its colour between the background's and the
    cloth's median (luma where it separates them, as in ``cloth_silhouette``), unclipped (codec noise is
    symmetric); the silhouette itself where the colours do not separate."""
    from scipy import ndimage

    f = frame.astype(np.float64) / 255.0
    bg = np.asarray(background, dtype=np.float64)
    inner = ndimage.binary_erosion(silhouette, iterations=2)
    if not inner.any():
        return silhouette.astype(np.float64)
    d = np.median(f[inner], axis=0) - bg
    luma = np.array([0.299, 0.587, 0.114])
    if abs(float(d @ luma)) >= 0.1:
        return ((f - bg) @ luma) / float(d @ luma)
    if float(d @ d) >= 0.15**2:
        return ((f - bg) @ d) / float(d @ d)
    return silhouette.astype(np.float64)


#: ``cloth_alpha_local`` takes the local colour where its contrast to the background differs from the
#: median's by more than this fraction
LOCAL_COLOUR_CONTRAST = 0.25


def cloth_alpha_local(frame: np.ndarray, background: np.ndarray, silhouette: np.ndarray, depth: int = 3) -> np.ndarray:
    """``cloth_alpha`` with the cloth's colour taken locally where a texture makes it differ: each
    pixel's luma between the background's and that of the nearest pixel ``depth`` px inside the
    silhouette, where that colour's contrast to the background differs from the median's by more
    than ``LOCAL_COLOUR_CONTRAST`` (else ``cloth_alpha``).  A texture that reaches the cloth's border
    (the checker of ``simulate``'s renders) makes the global alpha swing along the edge, which the
    outline's edge fit reads as a wrong field of view.  On ``simulate``'s videos of the L of the
    mesh tests (views 511-524, fov estimated) the camera's position error went from 0.72-9.11%
    (mean 2.73%, 5 of 14 over 3%) to 0.18-5.74% (mean 1.99%, 4 over 3%); the scene renderer's
    plain views (500-511) are unchanged.  The local colour everywhere did better on the checker
    (mean 1.88%) but sent one plain view's fov 45 deg off.  The rectangle's edge fit keeps the
    global alpha, which was measured on its own views."""
    from scipy import ndimage

    glob = cloth_alpha(frame, background, silhouette)
    inner = ndimage.binary_erosion(silhouette, iterations=depth)
    if not inner.any():
        return glob
    f = frame.astype(np.float64) / 255.0
    bg = np.asarray(background, dtype=np.float64)
    luma = np.array([0.299, 0.587, 0.114])
    d_glob = float((np.median(f[inner], axis=0) - bg) @ luma)
    _, (iy, ix) = ndimage.distance_transform_edt(~inner, return_indices=True)
    d = (f[iy, ix] - bg) @ luma
    # Only where the texture makes the nearby cloth clearly darker or lighter than its median: a
    # plain cloth's edge keeps the global alpha (a coarse mesh's splats leave the inside of the
    # scene renderer's cloth a little see-through, and the local colour then flattened the edge
    # profile: one view's fov went 45 deg off).
    ok = (np.abs(d) >= 0.1) & (np.abs(d - d_glob) > LOCAL_COLOUR_CONTRAST * abs(d_glob))
    return np.where(ok, ((f - bg) @ luma) / np.where(ok, d, 1.0), glob)


#: a mask whose edge ring (the pixels next to the silhouette's edge, one each side) has at least this
#: fraction of grey pixels counts as anti-aliased (exact-coverage anti-aliasing: ~0.5 for most edge
#: angles; a binary mask through H.264 at its own size: ~0.02)
SOFT_MASK_FRACTION = 0.2


def mask_alpha(levels: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """``[H, W]`` float coverage for the edge fit when a mask video gives the cloth (see ``fit_edges``).

    An anti-aliased mask's grey levels are the coverage, which places its sides to a fraction of a
    pixel, where a flat rectangle's field of view lies (a binary mask resized to another resolution
    has grey edges too, and they are its true area coverage at that resolution): on 12 random views over a textured
    background (``default_rng(100 + i)``, 320x240, fov estimated) anti-aliased masks gave the fov
    within 0.52 deg and the camera within 1.42% of its distance; the same masks thresholded, up to
    7 deg and 16% (3 of 12 views beyond 2 deg or 3%).  A binary mask is used as it is: placing its
    edge pixels between the cloth's colour and the colour just outside (the background there) was
    tried and was no better on that textured background (fov -0.3 / -4.5 / -2.3 deg on the first
    three views, against -1.0 / -1.6 / -7.0)."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(silhouette) & ~ndimage.binary_erosion(silhouette)
    grey = (levels > 0.05) & (levels < 0.95)
    if ring.any() and grey[ring].mean() >= SOFT_MASK_FRACTION:
        # the cloth's region and all that the edge fit reads around it (EDGE_BAND); other blobs are not cloth
        near = ndimage.binary_dilation(silhouette, structure=np.ones((3, 3), bool), iterations=math.ceil(EDGE_BAND) + 1)
        return np.where(near, levels, 0.0)
    return silhouette.astype(np.float64)


def _moved_camera(est: CameraEstimate, p: np.ndarray) -> CameraEstimate:
    """``est`` with the cloth rotated by ``p[:3]`` (axis-angle, camera frame, about its centre), moved by
    ``p[3:6]`` camera distances, and seen with field of view ``p[6]`` as a dolly zoom (the translation
    scaled with the focal length, so that the cloth keeps its size in the image)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec(np.asarray(p[:3], dtype=np.float64)).as_matrix()
    fov = float(p[6])
    zoom = math.tan(math.radians(est.fov_y_deg) / 2) / math.tan(math.radians(fov) / 2)
    t = (est.translation + np.asarray(p[3:6]) * float(np.linalg.norm(est.translation))) * zoom
    return CameraEstimate(rot @ est.rotation, t, fov, est.width, est.height)


def _project(est: CameraEstimate, points: np.ndarray) -> np.ndarray | None:
    """World ``points [K, 3]`` in the image ``[K, 2]`` (pixel centres at integers); None when one is behind the camera."""
    focal = est.height / (2 * math.tan(math.radians(est.fov_y_deg) / 2))
    x = points @ est.rotation.T + est.translation
    if (x[:, 2] <= 1e-6).any():
        return None
    return focal * x[:, :2] / x[:, 2:] + np.array([(est.width - 1) * 0.5, (est.height - 1) * 0.5])


def _corner_pixels(est: CameraEstimate, size: tuple[float, float]) -> np.ndarray:
    """The cloth's four corners ``[4, 2]`` in the image (pixel centres at integers; NaN behind the camera)."""
    w, hgt = size
    plane = np.array([[-w / 2, 0, -hgt / 2], [w / 2, 0, -hgt / 2], [w / 2, 0, hgt / 2], [-w / 2, 0, hgt / 2]])
    q = _project(est, plane)
    return np.full((4, 2), np.nan) if q is None else q


#: the edge fit uses the pixels this far (px) from the silhouette's edge
EDGE_BAND = 3.0


def _edge_fit(est: CameraEstimate, alpha: np.ndarray, silhouette: np.ndarray, fit_fov: bool, coverage) -> CameraEstimate:
    """Least squares of ``gain * coverage(camera, pixels, sigma)`` against ``alpha`` on the pixels within
    ``EDGE_BAND`` of the silhouette's edge, over the pose (a rigid motion of the cloth in the camera
    frame), the fov with ``fit_fov`` (a dolly zoom), ``sigma`` and ``gain``; ``coverage`` returns None
    when the cloth is behind the camera."""
    from scipy import ndimage
    from scipy.optimize import least_squares

    dist = np.where(silhouette, ndimage.distance_transform_edt(silhouette), ndimage.distance_transform_edt(~silhouette))
    ys, xs = np.nonzero(dist <= EDGE_BAND)
    pix = np.stack([xs, ys], 1).astype(np.float64)
    target = alpha[ys, xs]

    def camera(x):
        return _moved_camera(est, np.r_[x[:6], est.fov_y_deg + (x[6] if fit_fov else 0.0)])

    def residual(x):
        model = coverage(camera(x), pix, math.exp(x[-2]))
        return np.full(len(target), 10.0) if model is None else x[-1] * model - target

    n = 7 if fit_fov else 6
    lo, hi = np.full(n + 2, -np.inf), np.full(n + 2, np.inf)
    if fit_fov:
        lo[6], hi[6] = 5.0 - est.fov_y_deg, 150.0 - est.fov_y_deg
    x0 = np.r_[np.zeros(n), math.log(0.7), 1.0]
    fit = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac", xtol=1e-10, ftol=1e-12, max_nfev=200)
    return camera(fit.x)


def fit_edges(est: CameraEstimate, alpha: np.ndarray, silhouette: np.ndarray, size: tuple[float, float],
              fit_fov: bool) -> CameraEstimate:
    """The pose (and, with ``fit_fov``, the field of view) that fits the cloth's edges to sub-pixel accuracy:
    the pixels near the silhouette's edge against a model of the projected rectangle blurred across
    each side, ``gain * prod_k Phi(d_k / sigma)`` (``d_k`` the signed distance to side k), least squares
    over the pose, fov, ``sigma`` and ``gain``.

    A flat rectangle's image holds its field of view only in its four sides' sub-pixel positions:
    for a cloth 30-90 px across, a pixel of error at a corner is worth 10-40 degrees of fov.  This model
    is smooth in its parameters, unlike a rendered silhouette (the rasterizer's 1/255 cut-offs), so the
    fit does not stall in the valley along which the fov trades off against the pose."""
    from scipy.special import ndtr

    def coverage(cam, pix, sigma):
        q = _corner_pixels(cam, size)
        if not np.isfinite(q).all():
            return None
        area2 = np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1])
        model = np.ones(len(pix))
        for i in range(4):
            a, e = q[i], q[(i + 1) % 4] - q[i]
            d = np.sign(area2) * (e[0] * (pix[:, 1] - a[1]) - e[1] * (pix[:, 0] - a[0])) / max(np.hypot(*e), 1e-9)
            model = model * ndtr(d / sigma)
        return model

    return _edge_fit(est, alpha, silhouette, fit_fov, coverage)


def rendered_iou(est: CameraEstimate, silhouette: np.ndarray, size: tuple[float, float] | None,
                 shape: "FlatShape | None" = None) -> float:
    """IoU of the flat cloth drawn by the scene's renderer from ``est`` with frame 0's ``silhouette``.

    The rendering scores the estimate; it does not move it.  Levenberg-Marquardt on the rendered
    cloth's alpha after the edge fit (until 2026-12-04) matched this renderer's edge profile, which
    depends on the mesh: a 9x9 mesh's splats leave the edge ramp ~9 px wide and the inside at ~0.87
    alpha, a 31x31 mesh's ~2 px and ~0.99.  It helped on views drawn with the estimator's own 9x9
    mesh and hurt on everything else: on 12 views of the demo's 12x12 checkered cloth rendered by
    ``dreamcloth simulate`` (320x240, fov estimated) the camera was 0.8-7.1% off its distance and
    the fov up to 2.8 deg (4 views beyond the 3% goal), against 0.7-2.4% and 1.0 deg from the edge
    fit alone, whose blur and gain are free."""
    from scipy import ndimage

    from dreamcloth import render as R

    verts, faces = _flat_mesh(size) if shape is None else shape.tensors()
    with torch.no_grad():
        alpha_r = render_flat_cloth(verts, faces, est.as_camera()).double().numpy()
    # Frame 0's silhouette is cut at half its interior's median colour, so the rendering is cut at half its
    # interior's median alpha: up close, the splats of the 9x9 mesh leave it at ~0.83.
    inner = ndimage.binary_erosion(silhouette, iterations=2)
    level = float(np.median(alpha_r[inner])) if inner.any() else 1.0
    pred = _filled(alpha_r > R.SILHOUETTE_ALPHA * min(level, 1.0))
    return float((pred & silhouette).sum() / max((pred | silhouette).sum(), 1))


# -- other shapes: a flat mesh from a file -------------------------------------------------------------

#: a mesh counts as flat when no vertex is farther than this fraction of its size from its best plane
MAX_MESH_BEND = 0.01
#: the field of view the search for a mesh's first camera assumes when none is given (the edge fit then fits it)
DEFAULT_FOV_DEG = 45.0


@dataclasses.dataclass(frozen=True)
class FlatShape:
    """A flat cloth mesh laid as a scene lays it: the file's vertices times ``scale``, turned by
    ``rotation_deg`` (so that its plane is the x-z plane, normal +y), its vertex mean at the origin."""

    vertices: np.ndarray  # [V, 3], y ~ 0
    faces: np.ndarray  # [F, 3]
    rotation_deg: tuple[float, float, float]
    loops: tuple[np.ndarray, ...]  # its boundary loops, closed polylines [K, 3] in the plane
    path: Path
    scale: float

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.vertices, dtype=torch.float32), torch.as_tensor(self.faces)

    @property
    def extent(self) -> float:
        """The diagonal of its bounding box in the plane (m): at least its longest side."""
        return float(np.linalg.norm(np.ptp(self.vertices[:, [0, 2]], axis=0)))

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Area centroid ``[2]`` and covariance ``[2, 2]`` of the shape in (x, z): a triangle's second
        moment about the origin is area/12 (a a^T + b b^T + c c^T + s s^T), s = a + b + c."""
        p = self.vertices[:, [0, 2]][self.faces]  # [F, 3, 2]
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        total = area.sum()
        mean = (area[:, None] * p.mean(1)).sum(0) / total
        ssum = p.sum(1)
        second = (area[:, None, None] / 12.0 * (np.einsum("fki,fkj->fij", p, p) + ssum[:, :, None] * ssum[:, None, :])).sum(0) / total
        return mean, second - np.outer(mean, mean)

    @staticmethod
    def from_file(path: str | Path, scale: float = 1.0, flipped: bool = False) -> "FlatShape":
        """The mesh of ``path`` (OBJ, PLY, ...; metres times ``scale``) laid flat; ``flipped``: its other side up."""
        import trimesh
        from scipy.spatial.transform import Rotation

        from dreamcloth import taichi_mpm as M
        from dreamcloth.taichi_mpm.sampling import load_mesh

        path = Path(path)
        try:
            mesh = load_mesh(path)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"--mesh: {exc}") from None
        v = np.asarray(mesh.vertices, dtype=np.float64) * scale
        centred = v - v.mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        size = float(np.ptp(centred @ vt[:2].T, axis=0).max())
        bend = float(np.abs(centred @ vt[2]).max())
        if size <= 0 or bend > MAX_MESH_BEND * size:
            raise InputError(f"--mesh {path}: the mesh is not flat (vertices up to {bend:.3g} m off its plane, "
                             f"{bend / max(size, 1e-12):.1%} of its size); scene init needs the cloth flat in the first frame")
        rows = np.stack([vt[0], vt[2], np.cross(vt[0], vt[2])])  # plane axes -> x and z, the normal -> y
        if flipped:
            rows = np.diag([1.0, -1.0, -1.0]) @ rows
        angles = tuple(float(a) for a in Rotation.from_matrix(rows).as_euler("xyz", degrees=True))
        # exactly what a scene does with the file (simulation.build): turn, then centre the vertex mean
        laid = v @ M.euler_xyz(angles).T
        laid = laid - laid.mean(0)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        loops = tuple(np.asarray(d, dtype=np.float64) for d in trimesh.Trimesh(laid, faces, process=False).outline().discrete)
        if not loops:
            raise InputError(f"--mesh {path}: the mesh has no boundary (a closed surface is not a flat cloth)")
        return FlatShape(laid, faces, angles, loops, path, scale)


def _outline_pixels(est: CameraEstimate, loops) -> list[np.ndarray] | None:
    """Closed polylines ``[K, 3]`` (a shape's boundary loops) in the image; None when a point is behind the camera."""
    out = [_project(est, loop) for loop in loops]
    return None if any(q is None for q in out) else out


def _inside(loops: list[np.ndarray], pix: np.ndarray) -> np.ndarray:
    """Even-odd inside test of ``pix [P, 2]`` against closed polylines (holes are loops too)."""
    from matplotlib.path import Path as MplPath

    inside = np.zeros(len(pix), bool)
    for loop in loops:
        inside ^= MplPath(loop).contains_points(pix)
    return inside


def signed_distance(loops: list[np.ndarray], pix: np.ndarray) -> np.ndarray:
    """Signed distance (px, positive inside) of ``pix [P, 2]`` to the polygon bounded by ``loops``."""
    a = np.concatenate([lp[:-1] for lp in loops])
    e = np.concatenate([lp[1:] - lp[:-1] for lp in loops])
    ee = np.maximum((e * e).sum(1), 1e-12)
    rel = pix[:, None, :] - a[None]  # [P, S, 2]
    t = np.clip((rel * e[None]).sum(-1) / ee[None], 0.0, 1.0)
    d = np.sqrt(((rel - t[..., None] * e[None]) ** 2).sum(-1)).min(1)
    return np.where(_inside(loops, pix), d, -d)


def fit_outline(est: CameraEstimate, alpha: np.ndarray, silhouette: np.ndarray, shape: FlatShape,
                fit_fov: bool) -> CameraEstimate:
    """``fit_edges`` for any flat shape: the pixels near the silhouette's edge against
    ``gain * Phi(d / sigma)``, ``d`` the signed distance to the projected outline, least squares over
    the pose (and fov), ``sigma`` and ``gain``."""
    from scipy.special import ndtr

    def coverage(cam, pix, sigma):
        loops = _outline_pixels(cam, shape.loops)
        return None if loops is None else ndtr(signed_distance(loops, pix) / sigma)

    return _edge_fit(est, alpha, silhouette, fit_fov, coverage)


def _loop_samples(shape: FlatShape, count: int = 240) -> list[np.ndarray]:
    """The shape's boundary loops resampled to ``count`` points in all, evenly along their length (3D)."""
    lengths = [float(np.linalg.norm(np.diff(lp, axis=0), axis=1).sum()) for lp in shape.loops]
    total = sum(lengths)
    out = []
    for lp, length in zip(shape.loops, lengths):
        k = max(8, round(count * length / total))
        seg = np.linalg.norm(np.diff(lp, axis=0), axis=1)
        at = np.concatenate([[0.0], np.cumsum(seg)])
        s = np.linspace(0.0, at[-1], k, endpoint=False)
        out.append(np.stack([np.interp(s, at, lp[:, i]) for i in range(3)], 1))
    return out


def fit_contour(est: CameraEstimate, silhouette: np.ndarray, shape: FlatShape) -> CameraEstimate:
    """The pose (at ``est``'s fov) that lays the projected outline on the silhouette's edge: a symmetric
    chamfer fit (the silhouette's edge pixels' distances to the projected outline, and points along
    the outline against the distance map of the edge), least squares.  Its basin is wide (it sees
    every pixel of the outline however far off), so it takes the moment-matched first cameras, which
    can be tens of pixels off where perspective foreshortens the shape, to within a pixel or so."""
    from scipy import ndimage
    from scipy.optimize import least_squares

    edge = silhouette & ~ndimage.binary_erosion(silhouette)
    ys, xs = np.nonzero(edge)
    epix = np.stack([xs, ys], 1).astype(np.float64)
    if len(epix) > 600:
        epix = epix[np.linspace(0, len(epix) - 1, 600).astype(int)]
    dmap = ndimage.distance_transform_edt(~edge)
    h, w = silhouette.shape
    big = float(max(h, w))

    samples = np.concatenate(_loop_samples(shape))

    def camera(x):
        return _moved_camera(est, np.r_[x, est.fov_y_deg])

    def residual(x):
        cam = camera(x)
        loops = _outline_pixels(cam, shape.loops)
        p = _project(cam, samples)
        if loops is None or p is None:
            return np.full(len(epix) + len(samples), big)
        r1 = np.abs(signed_distance(loops, epix))
        r2 = ndimage.map_coordinates(dmap, [p[:, 1], p[:, 0]], order=1, mode="constant", cval=big)
        return np.concatenate([r1 / math.sqrt(len(r1)), r2 / math.sqrt(len(r2))])

    fit = least_squares(residual, np.zeros(6), x_scale="jac", max_nfev=300)
    return camera(fit.x)


def weak_perspective_poses(a: np.ndarray, origin_px: np.ndarray, focal: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two camera poses ``(world -> camera R, t)`` whose weak-perspective image of the plane
    (plane coords (p, q) = world (p, 0, q)) is the affine map ``x = a @ (p, q) + origin_px`` (image
    coordinates centred on the principal point).

    With s = f / Z, ``a / s`` is the top of two orthonormal 3-vectors r1, r2 (the images of world x
    and z), whose third components z1, z2 satisfy z1^2 = 1 - |a1|^2 u, z2^2 = 1 - |a2|^2 u,
    z1 z2 = -(a1 . a2) u with u = 1 / s^2: a quadratic in u, whose smaller root is the real pose.  The
    signs (z1, z2) and (-z1, -z2) are the tilt's two-fold ambiguity."""
    c1, c2, c12 = float(a[:, 0] @ a[:, 0]), float(a[:, 1] @ a[:, 1]), float(a[:, 0] @ a[:, 1])
    qa, qb = c1 * c2 - c12 * c12, -(c1 + c2)
    if qa <= 1e-18:
        return []
    disc = max(qb * qb - 4 * qa, 0.0)
    u = (-qb - math.sqrt(disc)) / (2 * qa)
    if u <= 0:
        return []
    s = 1.0 / math.sqrt(u)
    z1 = math.sqrt(max(1.0 - c1 * u, 0.0))
    z2 = math.sqrt(max(1.0 - c2 * u, 0.0))
    if c12 > 0:  # z1 z2 = -c12 u: opposite signs
        z2 = -z2
    depth = focal / s
    t = np.array([origin_px[0] * depth / focal, origin_px[1] * depth / focal, depth])
    out = []
    for sign in (1.0, -1.0):
        r1 = np.r_[a[:, 0] / s, sign * z1]
        r2 = np.r_[a[:, 1] / s, sign * z2]
        u_, _, vt = np.linalg.svd(np.stack([r1, r2, np.cross(r1, r2)], 1))
        rot = u_ @ vt
        if np.linalg.det(rot) < 0:
            continue  # a mirror map: no rotation makes it
        r1, r2 = rot[:, 0], rot[:, 1]
        out.append((np.stack([r1, np.cross(r2, r1), r2], 1), t))
    return out


def shape_cameras(silhouette: np.ndarray, shape: FlatShape, fov_y_deg: float | None, keep: int = 16) -> list[tuple[float, CameraEstimate]]:
    """First cameras for a flat shape, best first: ``(IoU, estimate)``.

    Up to perspective, the image is an affine map of the shape; matching the silhouette's area
    moments (mean, covariance) to the shape's fixes that map up to a turn or a mirror turn, which a
    search over 5-degree steps scored by the mapped shape's IoU with the silhouette picks.  Each
    affine map gives the two weak-perspective cameras (``weak_perspective_poses``) at the given fov
    (else 45 deg).
    """
    from scipy.linalg import sqrtm

    height, width = silhouette.shape
    c = np.array([(width - 1) * 0.5, (height - 1) * 0.5])
    ys, xs = np.nonzero(silhouette)
    pts = np.stack([xs, ys], 1).astype(np.float64) - c
    mu_s, cov_s = pts.mean(0), np.cov(pts.T) + np.eye(2) / 12.0
    mu_p, cov_p = shape.moments()
    a_s, a_p_inv = np.real(sqrtm(cov_s)), np.linalg.inv(np.real(sqrtm(cov_p)))
    # score on the pixels of the silhouette's box, grown by a quarter
    lo = np.maximum(np.floor(pts.min(0) + c - 0.25 * np.ptp(pts, 0)), 0).astype(int)
    hi = np.minimum(np.ceil(pts.max(0) + c + 0.25 * np.ptp(pts, 0)), [width - 1, height - 1]).astype(int)
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    sil = silhouette[gy.ravel(), gx.ravel()]
    plane_loops = [lp[:, [0, 2]] for lp in shape.loops]
    scored = []
    for mirror in (1.0, -1.0):
        for deg in range(0, 360, 5):
            th = math.radians(deg)
            q = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ np.diag([1.0, mirror])
            a = a_s @ q @ a_p_inv
            t = mu_s - a @ mu_p
            inside = _inside([lp @ a.T + t + c for lp in plane_loops], grid)
            iou = float((inside & sil).sum() / max((inside | sil).sum(), 1))
            scored.append((iou, a, t))
    scored.sort(key=lambda r: -r[0])
    focal = height / (2.0 * math.tan(math.radians(fov_y_deg if fov_y_deg is not None else DEFAULT_FOV_DEG) / 2))
    fov = fov_y_deg if fov_y_deg is not None else DEFAULT_FOV_DEG
    out = []
    for iou, a, t in scored:
        for rot, trans in weak_perspective_poses(a, t, focal):
            if trans[2] <= 0 or rot[:, 1] @ (-trans) <= 0:  # behind the camera, or seen from below
                continue
            est = CameraEstimate(rot, trans, fov, width, height)
            if any(abs(iou - o[0]) < 0.02 and np.allclose(est.rotation, o[1].rotation, atol=0.15) for o in out):
                continue  # the neighbour of one already kept
            out.append((iou, est))
        if len(out) >= keep:
            break
    if not out:
        raise ValueError("no camera shows the shape from above where the image shows the cloth")
    return out


def outline_iou(est: CameraEstimate, shape: FlatShape, silhouette: np.ndarray) -> float:
    """IoU of the projected outline's inside with the silhouette (pixel centres; no rendering)."""
    loops = _outline_pixels(est, shape.loops)
    if loops is None:
        return 0.0
    h, w = silhouette.shape
    pts = np.concatenate(loops)
    lo = np.maximum(np.floor(pts.min(0)), 0).astype(int)
    hi = np.minimum(np.ceil(pts.max(0)), [w - 1, h - 1]).astype(int)
    inside = np.zeros_like(silhouette)
    if (hi >= lo).all():
        gx, gy = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        inside[gy.ravel(), gx.ravel()] = _inside(loops, np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64))
    return float((inside & silhouette).sum() / max((inside | silhouette).sum(), 1))


def estimate_shape_scene(sil: np.ndarray, alpha: np.ndarray, shape_path: Path, scale: float,
                         fov_y_deg: float | None, source: str, tries: int = 2) -> tuple[CameraEstimate, float, FlatShape]:
    """Camera and laid shape for a flat mesh.  Both sides up are candidates (the shape and its mirror
    image).  Every first camera of both is laid on the silhouette's edge (``fit_contour``, at the
    first cameras' fov); for each side up, the ``tries`` distinct poses whose outlines then match the
    silhouette best are fitted to the edges (with the fov when it is not given), and the rendered
    IoU picks.  The moment match alone ranks the first cameras badly under strong perspective: on
    an L-shaped cloth seen from 2.4 m at 38 deg elevation (fov 45 deg) the right camera came from
    its 7th-ranked first camera, while the best-ranked one led to a wrong pose (IoU 0.938 against
    0.995).  A shape with a mirror symmetry looks the same from two cameras: either may be returned."""
    laid: dict[bool, list[tuple[float, CameraEstimate, FlatShape]]] = {}
    for flipped in (False, True):
        shape = FlatShape.from_file(shape_path, scale, flipped)
        try:
            firsts = shape_cameras(sil, shape, fov_y_deg)
        except ValueError:
            continue
        laid[flipped] = sorted(((outline_iou(e, shape, sil), e, shape) for e in (fit_contour(c, sil, shape) for _, c in firsts)),
                               key=lambda c: -c[0])
    if not laid:
        raise InputError(f"{source}: no camera shows the mesh {shape_path} from above where the image shows the cloth")
    # The best few distinct poses of each side up: under weak perspective the shape and its mirror
    # image seen from the mirrored view cast the same silhouette, and only perspective (the edge
    # fit, the rendering) tells them apart (an L at 16 deg elevation: outline IoU 0.925 for the wrong
    # side up against 0.923, rendered 0.980 against 0.990).
    chosen: list[tuple[float, CameraEstimate, FlatShape]] = []
    for side in laid.values():
        kept: list[CameraEstimate] = []
        for c in side:
            if any(np.allclose(c[1].rotation, k.rotation, atol=0.02) and np.allclose(c[1].translation, k.translation,
                   atol=0.01 * np.linalg.norm(k.translation)) for k in kept):
                continue
            kept.append(c[1])
            chosen.append(c)
            if len(kept) >= tries:
                break
    best = None
    for _, cand, shape in chosen:
        est = fit_outline(cand, alpha, sil, shape, fov_y_deg is None)
        iou = rendered_iou(est, sil, None, shape=shape)
        if best is None or iou > best[1]:
            best = (est, iou, shape)
    return best


# -- the whole estimate ------------------------------------------------------------------------------------


def _estimation_frame(frame: np.ndarray) -> np.ndarray:
    from .video_io import resize_frames

    h, w = frame.shape[:2]
    scale = MAX_ESTIMATION_SIDE / max(h, w)
    if scale >= 1:
        return frame
    return resize_frames(frame[None], (max(16, round(h * scale)), max(16, round(w * scale))))[0]


def estimate_scene(frame: np.ndarray, size: tuple[float, float] | None, fov_y_deg: float | None = None,
                   mask: np.ndarray | None = None, source: str = "frame 0", shape_path: str | Path | None = None,
                   scale: float = 1.0) -> SceneEstimate:
    """Camera and cloth from one frame ``[H, W, 3]`` uint8 showing a flat cloth at rest: a
    ``size = (W, H)`` m rectangle, or the flat mesh of ``shape_path`` (metres times ``scale``)."""
    if shape_path is None and (size is None or not all(math.isfinite(s) and s > 0 for s in size)):
        raise InputError(f"cloth size must be two positive lengths in metres, got {None if size is None else list(size)}")
    if shape_path is not None and not (math.isfinite(scale) and scale > 0):
        raise InputError(f"--scale must be a positive number, got {scale}")
    if fov_y_deg is not None and not (1.0 <= fov_y_deg <= 170.0):
        raise InputError(f"fov must lie in [1, 170] degrees, got {fov_y_deg}")
    frame = _estimation_frame(frame)
    h, w = frame.shape[:2]
    background, uniform = border_colour(frame)
    levels = None
    if mask is not None:
        from .video_io import resize_frames

        m3 = np.repeat(np.round(np.clip(np.asarray(mask, dtype=np.float64), 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
        levels = resize_frames(m3[None], (h, w))[0, ..., 0].astype(np.float64) / 255.0
        mask = levels > 0.5
    sil = cloth_silhouette(frame, background, mask)
    area = int(sil.sum())
    if area < max(64, 0.002 * h * w):
        raise InputError(f"{source}: no cloth-like region found (the largest region that differs from the background "
                         f"colour {np.round(background, 2).tolist()} has {area} pixels)")
    if sil[0].any() or sil[-1].any() or sil[:, 0].any() or sil[:, -1].any():
        raise InputError(f"{source}: the cloth touches the image border; the whole cloth must be in view in the first frame")
    fov_given = fov_y_deg is not None
    shape = None
    if shape_path is not None:
        alpha = cloth_alpha_local(frame, background, sil) if mask is None else mask_alpha(levels, sil)
        est, iou, shape = estimate_shape_scene(sil, alpha, Path(shape_path), scale, fov_y_deg, source)
        corners, aspect = np.zeros((0, 2)), float("nan")
        what = f"the flat mesh {Path(shape_path).name}"
    else:
        est, iou, corners, aspect = _estimate_rectangle(frame, sil, area, size, fov_y_deg, mask, levels, background, source)
        what = f"a flat {size[0]:g}x{size[1]:g} m cloth"
    # A small silhouette loses IoU to a pixel's uncertainty along its edge: allow for it.
    from scipy import ndimage

    edge_fraction = float((sil & ~ndimage.binary_erosion(sil)).sum()) / area
    need = max(0.6, min(MIN_FLAT_IOU, 1.0 - 0.75 * edge_fraction))
    if iou < need:
        raise InputError(f"{source}: {what} does not match the silhouette (best IoU {iou:.3f} "
                         f"< {need:.2f}); is the cloth flat and at rest, and is its {'scale' if shape else 'size'} right?")
    f = frame.astype(np.float64) / 255.0
    inner = ndimage.binary_erosion(sil, iterations=2)
    colour = np.median(f[inner if inner.any() else sil], axis=0)
    return SceneEstimate(est, corners, fov_given, iou, aspect, tuple(float(c) for c in background), uniform,
                         tuple(float(c) for c in colour), shape)


def _estimate_rectangle(frame, sil, area, size, fov_y_deg, mask, levels, background, source):
    """The rectangle's camera: ``(estimate, rendered IoU, corners [4, 2], aspect seen)``."""
    h, w = frame.shape[:2]
    corners = refine_corners(sil, quad_corners(sil))
    fill = area / max(polygon_area(corners), 1e-9)
    if not 0.85 <= fill <= 1.15:
        raise InputError(f"{source}: the cloth region is not a flat four-cornered sheet (it fills {fill:.0%} of its corners' "
                         "quadrilateral); scene init needs the cloth flat and at rest in the first frame")
    try:
        candidates = initial_cameras(corners, size, w, h, fov_y_deg)
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None
    want = size[0] / size[1]
    aspect = candidates[0][2]
    sides = np.linalg.norm(corners - np.roll(corners, 1, axis=0), axis=1)
    # A corner is found to a pixel or so: on a silhouette a few pixels thin the aspect says little.
    if sides.min() >= 15 and abs(aspect / want - 1) > MAX_ASPECT_ERROR:
        raise InputError(f"{source}: the cloth size {size[0]:g}x{size[1]:g} m (aspect {want:.2f}) contradicts the image, "
                         f"where the cloth's sides look {aspect:.2f} : 1")
    alpha = cloth_alpha(frame, background, sil) if mask is None else mask_alpha(levels, sil)
    # The corners' residual does not always rank the assignments right (a pixel of error on a thin
    # silhouette): refine the best few (the rectangle's half-turn twin adds nothing) and keep the best match.
    # Each is refined twice: on blurred then sharp silhouettes (a wide basin), then on the edges' sub-pixel
    # positions (which also give the fov when it is not given); the rendered cloth's IoU ranks them.
    best = None
    tried: list[np.ndarray] = []
    for _, cand, _ in candidates:
        if any(np.allclose(np.abs(cand.eye), np.abs(e), rtol=0.05, atol=0.05 * np.linalg.norm(e)) for e in tried):
            continue
        tried.append(cand.eye)
        est = fit_edges(refine_camera(cand, sil, size), alpha, sil, size, fov_y_deg is None)
        iou = rendered_iou(est, sil, size)
        if best is None or iou > best[1]:
            best = (est, iou)
        if iou >= 0.97 or len(tried) >= 3:
            break
    return best[0], best[1], corners, aspect


def scene_text(est: SceneEstimate, size: tuple[float, float] | None, *, fps: float, frames: int, height: float = 0.0,
               width_px: int = 128, grid: int = 32, vertices: int = 21, source: str = "", mesh_ref: str | None = None) -> str:
    """A scene file (TOML, commented) that puts the cloth where ``est`` saw it (``est.shape``'s mesh
    file is written as ``mesh_ref``, relative to the scene file)."""
    shape = est.shape
    w, hgt = size if shape is None else (shape.extent, shape.extent)
    n_long = max(3, vertices)
    nx, ny = (n_long, max(3, round(n_long * hgt / w))) if w >= hgt else (max(3, round(n_long * w / hgt)), n_long)
    top = GROUND_Y + max(height, 0.0) + 0.3
    side = max(1.0, 1.5 * max(w, hgt), top)
    side = math.ceil(side * 10) / 10
    centre = np.array([side / 2, GROUND_Y + max(height, 0.005), side / 2])
    cam = est.camera.shifted(centre)
    aspect = est.camera.height / est.camera.width
    c = cam.as_camera(width_px, max(16, round(width_px * aspect)))

    def vec(v):
        return "[" + ", ".join(f"{float(a):.6g}" for a in v) + "]"

    masks = "background" if est.background_uniform else "colour"
    if shape is None:
        cloth_lines = f'mesh = "grid:{nx}x{ny}"\nsize = [{w:g}, {hgt:g}]\ncenter = {vec(centre)}\nrotation_deg = [0.0, 0.0, 0.0]'
    else:
        cloth_lines = (f'mesh = "{mesh_ref or shape.path}"\nscale = {shape.scale:g}\ncenter = {vec(centre)}\n'
                       f"rotation_deg = {vec(shape.rotation_deg)}  # lays the mesh flat, this side up")
    return f"""# Written by `dreamcloth scene init`{f' from {source}' if source else ''}: camera and cloth from the first frame.
# Estimated: camera {est.distance:.3g} m from the cloth's centre, {est.elevation_deg:.1f} deg above its plane,
# fov_y {est.camera.fov_y_deg:.2f} deg ({'given' if est.fov_given else 'estimated'}); rendered silhouette vs frame 0: IoU {est.silhouette_iou:.3f}.
# The cloth is taken as level, {height:g} m above the ground plane.  Add colliders and pins below,
# and check the result with `dreamcloth scene check`.

[scene]
fps = {fps:g}
frames = {frames}
grid = {grid}
domain = [[0.0, 0.0, 0.0], [{side:g}, {side:g}, {side:g}]]

[camera]
width = {c.width}
height = {c.height}
fov_y_deg = {est.camera.fov_y_deg:.6g}
eye = {vec(c.eye)}
look_at = {vec(c.look_at)}
up = {vec(c.up)}
background = {vec(est.background)}
masks = "{masks}"

[[object]]
name = "cloth"
kind = "cloth"
{cloth_lines}
color = {vec(est.cloth_color)}
texture = "plain"

[object.material]
model = "cloth"

[object.fit]
young_modulus = true
damping = true
bending_stiffness = true
drag_coefficient = true

[[collider]]
kind = "plane"
point = [0.0, {GROUND_Y:g}, 0.0]
normal = [0.0, 1.0, 0.0]
"""


@dataclasses.dataclass(frozen=True)
class SceneInitResult:
    scene_path: Path
    overlay_path: Path
    estimate: SceneEstimate


def parse_size(text: str) -> tuple[float, float]:
    """``"0.6x0.4"`` -> ``(0.6, 0.4)`` metres."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        w, h = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--cloth-size must be WIDTHxHEIGHT in metres (e.g. 0.6x0.4), got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in (w, h)):
        raise InputError(f"--cloth-size must be two positive lengths in metres, got {text!r}")
    return w, h


def overlay_image(frame: np.ndarray, est: SceneEstimate, size: tuple[float, float] | None,
                  shape: "FlatShape | None" = None) -> np.ndarray:
    """Frame 0 with the estimated cloth drawn over it (red) and the silhouette's corners (green)."""
    from dreamcloth import render as R

    frame = _estimation_frame(frame)
    verts, faces = _flat_mesh(size) if shape is None else shape.tensors()
    with torch.no_grad():
        alpha = render_flat_cloth(verts, faces, est.camera.as_camera())
    out = R.overlay(frame[None], (alpha > R.SILHOUETTE_ALPHA).float()[None], color=(255, 0, 0), opacity=0.45)[0]
    # Small videos are enlarged (whole pixels) so that the overlay can be judged by eye.
    k = max(1, -(-384 // max(out.shape[:2])))
    out = np.repeat(np.repeat(out, k, axis=0), k, axis=1)
    for x, y in est.corners_px:
        xi, yi = int(round((x + 0.5) * k - 0.5)), int(round((y + 0.5) * k - 0.5))
        out[max(0, yi - 2): yi + 3, max(0, xi - 2): xi + 3] = (0, 200, 0)
    return out


def init_scene(video_path: str | Path, cloth_size: tuple[float, float] | None, out: str | Path, *, fov_y_deg: float | None = None,
               height: float = 0.0, masks_path: str | Path | None = None, width: int = 128, grid: int = 32,
               vertices: int = 21, mesh_path: str | Path | None = None, scale: float = 1.0) -> SceneInitResult:
    """``dreamcloth scene init``: estimate camera and cloth (a ``cloth_size`` rectangle, or the flat mesh
    ``mesh_path``) from the video's first frame and write a scene file (and ``<out>.png``, the estimate
    drawn over frame 0)."""
    import os

    import imageio.v3 as iio

    from .scene import load_scene
    from .video_io import read_video

    if (cloth_size is None) == (mesh_path is None):
        raise InputError("give the cloth's shape: --cloth-size WIDTHxHEIGHT for a rectangle, or --mesh FILE (not both)")
    if not (math.isfinite(height) and 0.0 <= height <= 10.0):
        raise InputError(f"--height must lie in [0, 10] m, got {height}")
    if not 16 <= width <= 4096:
        raise InputError(f"--width must lie in [16, 4096] pixels, got {width}")
    if mesh_path is not None and not Path(mesh_path).is_file():
        raise InputError(f"--mesh {mesh_path} does not exist")
    video = read_video(video_path, min_frames=2)
    mask = None
    if masks_path is not None:
        from .masks import read_mask_video

        mask = read_mask_video(masks_path, video.fps, tuple(video.frames.shape[1:3]), levels=True)[0, 0].numpy()
    est = estimate_scene(video.frames[0], cloth_size, fov_y_deg, mask, source=f"frame 0 of {video_path}",
                         shape_path=mesh_path, scale=scale)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mesh_ref = None
    if mesh_path is not None:
        mesh_ref = Path(os.path.relpath(Path(mesh_path).resolve(), out.parent.resolve())).as_posix()
    text = scene_text(est, cloth_size, fps=video.fps, frames=video.num_frames, height=height, width_px=width, grid=grid,
                      vertices=vertices, source=str(video_path), mesh_ref=mesh_ref)
    out.write_text(text)
    load_scene(out)  # what we wrote must be a valid scene
    overlay_path = out.with_suffix(".png")
    iio.imwrite(overlay_path, overlay_image(video.frames[0], est, cloth_size, est.shape))
    return SceneInitResult(out, overlay_path, est)
