"""Session code as Plone's developer documentation teaches it.

It uses the calls the documentation shows, unchanged: the manager
acquired as ``context.session_data_manager``, ``getSessionData(
create=True)``, ``set()`` and ``get(key, None)``, and a persistent object
kept in the session whose attribute changes are saved without telling the
session.
"""
from persistent import Persistent
from Products.Five.browser import BrowserView


SESSION_KEY = 'checkout'


class CheckoutData(Persistent):
    """A visitor's checkout, kept in the session."""

    def __init__(self):
        self.items = ()
        self.step = 'cart'


def createSessionData(sdm):
    session = sdm.getSessionData(create=True)
    data = CheckoutData()
    session.set(SESSION_KEY, data)
    return data


def getOrCreateCheckoutSession(context, request):
    sdm = context.session_data_manager
    session = sdm.getSessionData(create=True)
    data = session.get(SESSION_KEY, None)
    if data is None:
        data = createSessionData(sdm)
    return data


class CheckoutView(BrowserView):
    """``@@checkout?add=x&step=y``: change the checkout, show it."""

    def __call__(self):
        data = getOrCreateCheckoutSession(self.context, self.request)
        if self.request.form.get('add'):
            data.items = data.items + (self.request.form['add'],)
        if self.request.form.get('step'):
            data.step = self.request.form['step']
        self.request.response.setHeader('Content-Type', 'text/plain')
        return '%s: %s' % (data.step, ','.join(data.items))
