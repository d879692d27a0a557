## Script (Python) "cart_update"
##bind container=container
##bind context=context
##bind namespace=
##bind script=script
##bind subpath=traverse_subpath
##parameters=action='', item=''
##title=Add to or clear the session cart
##
# Handles the cart form of the front page, then redirects back to it.
request = context.REQUEST
if request.get('REQUEST_METHOD') == 'POST':
    session = request.SESSION
    # A copy, set back as a whole: changing the stored list in place would
    # not tell the session that it changed.
    cart = list(session.get('cart') or [])
    item = item.strip()[:40]
    if action == 'add' and item:
        cart.append(item)
    elif action == 'clear':
        cart = []
    session.set('cart', cart)
request.RESPONSE.redirect(container.absolute_url() + '/')
