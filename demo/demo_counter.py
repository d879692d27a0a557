## Script (Python) "demo_counter"
##bind container=container
##bind context=context
##bind namespace=
##bind script=script
##bind subpath=traverse_subpath
##parameters=
##title=Count visits in the session
##
# Counts the visits of the front page in the visitor's session.
session = context.REQUEST.SESSION
visits = (session.get('visits') or 0) + 1
session.set('visits', visits)
return visits
