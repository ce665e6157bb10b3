"""The ROS 2 message definitions of the standard types vehicles log, as rosbag2 embeds them.

An MCAP file of ROS 2 messages carries each channel's definition (``ros2msg``): the type's own
text, then each type it uses after a line of 80 ``=`` and ``MSG: <package>/<Type>``. These are
the upstream definitions (``sensor_msgs``, ``nav_msgs``, ``geometry_msgs``, ``std_msgs``,
``builtin_interfaces``, ``unique_identifier_msgs`` and ``autoware_perception_msgs``), comments
left out; :func:`definition` assembles one type's text with everything it depends on, for
writers (the fleet simulator, tests) that record these types with ``mcap-ros2-support``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DEFINITIONS", "definition"]

DEFINITIONS: Final[dict[str, str]] = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec\n",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
    "sensor_msgs/NavSatStatus": (
        "int8 STATUS_NO_FIX = -1\nint8 STATUS_FIX = 0\nint8 STATUS_SBAS_FIX = 1\n"
        "int8 STATUS_GBAS_FIX = 2\nint8 status\nuint16 SERVICE_GPS = 1\n"
        "uint16 SERVICE_GLONASS = 2\nuint16 SERVICE_COMPASS = 4\nuint16 SERVICE_GALILEO = 8\n"
        "uint16 service\n"
    ),
    "sensor_msgs/NavSatFix": (
        "uint8 COVARIANCE_TYPE_UNKNOWN = 0\nuint8 COVARIANCE_TYPE_APPROXIMATED = 1\n"
        "uint8 COVARIANCE_TYPE_DIAGONAL_KNOWN = 2\nuint8 COVARIANCE_TYPE_KNOWN = 3\n"
        "std_msgs/Header header\nsensor_msgs/NavSatStatus status\nfloat64 latitude\n"
        "float64 longitude\nfloat64 altitude\nfloat64[9] position_covariance\n"
        "uint8 position_covariance_type\n"
    ),
    "sensor_msgs/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data\n",
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Point": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Point32": "float32 x\nfloat32 y\nfloat32 z\n",
    "geometry_msgs/Polygon": "geometry_msgs/Point32[] points\n",
    "geometry_msgs/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    "geometry_msgs/Pose": "geometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n",
    "geometry_msgs/PoseWithCovariance": "geometry_msgs/Pose pose\nfloat64[36] covariance\n",
    "geometry_msgs/Twist": "geometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular\n",
    "geometry_msgs/TwistWithCovariance": "geometry_msgs/Twist twist\nfloat64[36] covariance\n",
    "geometry_msgs/TwistStamped": "std_msgs/Header header\ngeometry_msgs/Twist twist\n",
    "geometry_msgs/Accel": "geometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular\n",
    "geometry_msgs/AccelWithCovariance": "geometry_msgs/Accel accel\nfloat64[36] covariance\n",
    "nav_msgs/Odometry": (
        "std_msgs/Header header\nstring child_frame_id\n"
        "geometry_msgs/PoseWithCovariance pose\ngeometry_msgs/TwistWithCovariance twist\n"
    ),
    "unique_identifier_msgs/UUID": "uint8[16] uuid\n",
    "autoware_perception_msgs/ObjectClassification": (
        "uint8 UNKNOWN = 0\nuint8 CAR = 1\nuint8 TRUCK = 2\nuint8 BUS = 3\nuint8 TRAILER = 4\n"
        "uint8 MOTORCYCLE = 5\nuint8 BICYCLE = 6\nuint8 PEDESTRIAN = 7\n"
        "uint8 label\nfloat32 probability\n"
    ),
    "autoware_perception_msgs/Shape": (
        "uint8 BOUNDING_BOX = 0\nuint8 CYLINDER = 1\nuint8 POLYGON = 2\nuint8 type\n"
        "geometry_msgs/Polygon footprint\ngeometry_msgs/Vector3 dimensions\n"
    ),
    "autoware_perception_msgs/TrackedObjectKinematics": (
        "uint8 UNAVAILABLE = 0\nuint8 SIGN_UNKNOWN = 1\nuint8 AVAILABLE = 2\n"
        "geometry_msgs/PoseWithCovariance pose_with_covariance\n"
        "uint8 orientation_availability\n"
        "geometry_msgs/TwistWithCovariance twist_with_covariance\n"
        "geometry_msgs/AccelWithCovariance acceleration_with_covariance\n"
        "bool is_stationary\n"
    ),
    "autoware_perception_msgs/TrackedObject": (
        "unique_identifier_msgs/UUID object_id\nfloat32 existence_probability\n"
        "autoware_perception_msgs/ObjectClassification[] classification\n"
        "autoware_perception_msgs/TrackedObjectKinematics kinematics\n"
        "autoware_perception_msgs/Shape shape\n"
    ),
    "autoware_perception_msgs/TrackedObjects": (
        "std_msgs/Header header\nautoware_perception_msgs/TrackedObject[] objects\n"
    ),
}
"""Each type's own text, by ``package/Type``."""

_USES: Final = re.compile(r"^([a-z_]+/[A-Za-z0-9]+)(?:\[\d*\])?\s", re.MULTILINE)
_SEPARATOR: Final = "=" * 80


def definition(datatype: str) -> str:
    """The full ``ros2msg`` text of ``datatype`` (``sensor_msgs/msg/NavSatFix`` or
    ``sensor_msgs/NavSatFix``), its dependencies appended; raises ``KeyError`` for a type not
    in :data:`DEFINITIONS`."""
    root = datatype.replace("/msg/", "/")
    order: list[str] = []
    pending = [root]
    while pending:
        name = pending.pop(0)
        if name in order:
            continue
        order.append(name)
        pending += _USES.findall(DEFINITIONS[name])
    parts = [DEFINITIONS[root]]
    for name in order[1:]:
        parts.append(f"{_SEPARATOR}\nMSG: {name}\n{DEFINITIONS[name]}")
    return "".join(parts)
