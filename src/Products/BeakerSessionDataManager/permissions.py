"""Permission names, the same as Products.Sessions uses."""
from Products.Sessions.permissions import access_session_data  # noqa: F401
from Products.Sessions.permissions import access_user_session_data  # noqa
from Products.Sessions.permissions import add_session_data_managers  # noqa
from Products.Sessions.permissions import change_session_data_managers  # noqa
