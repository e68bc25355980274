"""Everyday questions and the real content their synthetic answers are built from.

Each entry gives the facts once; `synthetic.py` arranges them into answers that differ in length,
structure, tone, examples and caveats, so two answers to one question differ in style, never in
being right. Sentences are written without contractions: the casual tone contracts them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    area: str
    question: str
    core: str  # the answer in one or two sentences
    points: tuple[str, ...]  # supporting points, most useful first
    example: str  # a concrete illustration, one sentence
    caveat: str  # when the advice does not hold, one sentence


BANK: tuple[Topic, ...] = (
    Topic(
        "sleep", "How can I fall asleep faster?",
        "Keep the same bedtime every night and give your body a calm hour before it.",
        ("Stop using screens about an hour before bed, because bright light delays melatonin.",
         "Keep the bedroom cool, dark and quiet; around 18 degrees Celsius suits most people.",
         "Avoid caffeine after early afternoon, since it stays in your system for six hours or more.",
         "If you are still awake after twenty minutes, get up and read something dull until you feel sleepy."),
        "For example, if you want to sleep at 11 pm, put the phone away at 10 and read a paper book instead.",
        "If you regularly lie awake for weeks despite good habits, it is worth talking to a doctor about insomnia.",
    ),
    Topic(
        "gardening", "How do I keep basil alive indoors?",
        "Give basil as much sun as you can and water it only when the top of the soil feels dry.",
        ("Place it in a south-facing window where it gets at least six hours of light.",
         "Use a pot with drainage holes so the roots never sit in water.",
         "Pinch off flower buds as soon as they appear, which keeps the plant producing leaves.",
         "Harvest from the top, just above a pair of leaves, so it grows bushy instead of tall."),
        "For example, cutting a stem just above the second set of leaves usually makes two new stems grow there.",
        "Supermarket basil is often several seedlings crammed in one pot, so it may struggle until you split it up.",
    ),
    Topic(
        "outdoors", "What should I pack for a day hike?",
        "Bring water, food, a rain layer, a map and a charged phone, and tell someone your route.",
        ("Carry about half a litre of water per hour of hiking, more in the heat.",
         "Pack a warm layer and a waterproof jacket, because mountain weather changes quickly.",
         "Take a small first-aid kit with blister plasters and any medication you need.",
         "Download an offline map, since phone signal often disappears on trails."),
        "For example, for a five-hour summer hike you would want roughly two and a half litres of water and a couple "
        "of sandwiches.",
        "Longer or remote routes call for more gear, such as a headlamp and an emergency blanket, so adjust the list "
        "to the trail.",
    ),
    Topic(
        "fitness", "How do I start running if I have never run before?",
        "Start with a run-walk plan three times a week and increase the running part slowly.",
        ("In the first week, alternate one minute of running with two minutes of walking for twenty minutes.",
         "Add about a minute of running to each interval per week rather than jumping ahead.",
         "Run at a pace where you could still hold a conversation.",
         "Get shoes that fit well, ideally tried on at a running shop."),
        "For example, many beginner plans take people from zero to running thirty minutes without stopping in about "
        "nine weeks.",
        "If you have joint problems or a heart condition, check with a doctor before you start.",
    ),
    Topic(
        "money", "How can I spend less on groceries?",
        "Plan the week's meals before you shop and buy only what is on your list.",
        ("Build meals around what is on sale and what is already in your cupboard.",
         "Compare the unit price on the shelf label rather than the package price.",
         "Buy staples such as rice, oats and dried beans in bulk.",
         "Cook larger portions and freeze leftovers for busy evenings."),
        "For example, a large bag of oats often costs less per serving than a week of single-portion cereal boxes.",
        "Bulk buying only saves money if you actually use the food before it goes off.",
    ),
    Topic(
        "cooking", "How do I cook rice on the stove so it is not mushy?",
        "Rinse the rice, use about one and a half cups of water per cup of rice, and simmer it covered without "
        "stirring.",
        ("Rinse until the water runs mostly clear, which removes loose starch.",
         "Bring the water to a boil, add the rice and a pinch of salt, then turn the heat to low.",
         "Keep the lid on for about fifteen minutes and resist the urge to stir.",
         "Let it rest off the heat, still covered, for ten minutes before fluffing it with a fork."),
        "For example, two cups of basmati rice with three cups of water feeds about four people.",
        "Brown rice and some varieties such as sushi rice need different amounts of water and time.",
    ),
    Topic(
        "programming", "What is a good first programming language?",
        "Python is a strong first choice because it reads almost like English and is used almost everywhere.",
        ("Its simple syntax lets you focus on ideas such as loops and functions instead of punctuation.",
         "It has a huge community, so answers to beginner questions are easy to find.",
         "It is used for web development, data analysis, automation and science.",
         "JavaScript is a good alternative if your main goal is building websites."),
        "For example, a ten-line Python script can rename hundreds of photos in a folder by date.",
        "The best first language is really the one that fits what you want to build, so start from your goal.",
    ),
    Topic(
        "career", "How should I prepare for a job interview?",
        "Research the company, match your experience to the job description, and practise your answers out loud.",
        ("Read the company's recent news and understand what its main products are.",
         "For each requirement in the posting, prepare a short story from your own experience.",
         "Use the situation, task, action, result structure to keep your answers focused.",
         "Prepare two or three thoughtful questions to ask at the end."),
        "For example, if the posting asks for teamwork, describe a project where you resolved a disagreement and what "
        "came of it.",
        "Interview formats vary a lot between industries, so ask the recruiter what to expect if you are unsure.",
    ),
    Topic(
        "health", "How much water should I drink a day?",
        "Most healthy adults do well drinking when they are thirsty, which usually adds up to about two litres a day.",
        ("Pale yellow urine is a simple sign that you are drinking enough.",
         "You need more in hot weather and when you exercise.",
         "Food also provides water, especially fruit, vegetables and soup.",
         "Keeping a bottle on your desk makes it easier to drink regularly."),
        "For example, after an hour of running on a warm day you might need an extra half litre to a litre.",
        "People with kidney or heart conditions may be told to limit fluids, so follow your doctor's advice if that "
        "applies.",
    ),
    Topic(
        "travel", "How do I deal with jet lag?",
        "Switch to the local schedule as soon as you arrive and get daylight in the morning.",
        ("Start shifting your bedtime by an hour a day a few days before you fly.",
         "Drink water on the flight and go easy on alcohol.",
         "Spend time outside in natural light at your destination, especially in the morning.",
         "Keep naps short, no more than twenty or thirty minutes."),
        "For example, after flying from New York to London, staying awake until about 10 pm local time helps you "
        "adjust much faster.",
        "Flying east is usually harder than flying west, so expect eastward trips to take a few days longer to recover "
        "from.",
    ),
    Topic(
        "home", "How do I get rid of mould in my bathroom?",
        "Clean the mould with a bathroom mould spray or diluted bleach and then fix the damp that caused it.",
        ("Wear gloves and open a window while you clean.",
         "Scrub the grout with an old toothbrush and rinse the area well.",
         "Run the extractor fan during showers and for twenty minutes afterwards.",
         "Wipe condensation off the walls and windows after showering."),
        "For example, a cheap squeegee used on the tiles after each shower removes most of the moisture mould needs.",
        "Large patches or mould that keeps coming back can mean a leak, which is a job for a professional.",
    ),
    Topic(
        "learning", "What is the best way to learn a new language as an adult?",
        "Practise a little every day, mixing listening, speaking and spaced review of vocabulary.",
        ("Fifteen minutes daily beats two hours once a week.",
         "Use a spaced-repetition app to review words just before you would forget them.",
         "Listen to podcasts or shows in the language, even when you understand only part of them.",
         "Find a conversation partner or tutor early, because speaking is what most learners avoid."),
        "For example, an online tutor for thirty minutes twice a week gives you regular speaking practice for a modest "
        "cost.",
        "Progress slows after the beginner stage, which is normal and not a sign that you are doing it wrong.",
    ),
    Topic(
        "technology", "How do I make my laptop battery last longer?",
        "Lower the screen brightness, close apps you are not using, and avoid keeping the battery at one hundred "
        "percent all day.",
        ("Turn on the battery saver mode that your operating system provides.",
         "Check which apps use the most power and quit the worst ones.",
         "Many laptops have a setting that stops charging at about eighty percent, which slows battery wear.",
         "Keep the laptop away from heat, since high temperatures age batteries faster."),
        "For example, dropping the brightness from full to half can add an hour or more of use on many laptops.",
        "Batteries wear out with age no matter what, so an old laptop may simply need a new battery.",
    ),
    Topic(
        "pets", "How do I stop my puppy from biting?",
        "Teach the puppy that biting ends the fun, and give it something it is allowed to chew instead.",
        ("When the puppy bites, stop playing and turn away for a few seconds.",
         "Offer a chew toy at once so it learns what it may bite.",
         "Praise calm behaviour during play.",
         "Make sure it gets enough sleep, because overtired puppies bite more."),
        "For example, if the puppy grabs your sleeve, freeze, wait until it lets go, then hand it a rope toy.",
        "If the biting gets worse or comes with growling and stiffness, a qualified trainer can check whether it is "
        "more than play.",
    ),
    Topic(
        "productivity", "How can I stop procrastinating?",
        "Make the first step so small that it is easy to start, and work in short, timed blocks.",
        ("Break the task into steps that take less than ten minutes each.",
         "Set a timer for twenty-five minutes and work until it rings.",
         "Put your phone in another room while you work.",
         "Decide the night before what the first task of the day will be."),
        "For example, instead of writing the report, commit only to opening the document and writing the title.",
        "Procrastination that comes with low mood or exhaustion may point to burnout, which needs rest rather than "
        "more discipline.",
    ),
    Topic(
        "money", "Should I pay off debt or save first?",
        "Build a small emergency fund first, then put extra money towards your most expensive debt.",
        ("A starter emergency fund of a month of expenses keeps a surprise bill from becoming new debt.",
         "Pay off credit cards and other high-interest debt before investing.",
         "Always make at least the minimum payment on every debt.",
         "Once high-interest debt is gone, grow the emergency fund to three to six months of expenses."),
        "For example, a credit card charging twenty percent interest costs far more than a savings account could ever "
        "earn.",
        "Low-interest debt such as some student loans may not need to be paid off early, so compare the interest "
        "rates.",
    ),
    Topic(
        "cooking", "How do I make a simple tomato pasta sauce?",
        "Soften garlic in olive oil, add a tin of chopped tomatoes, and simmer for twenty minutes with salt.",
        ("Cook the garlic gently so it turns golden but not brown.",
         "Add a pinch of sugar if the tomatoes taste sharp.",
         "Simmer uncovered so the sauce thickens.",
         "Finish with fresh basil and a little pasta water to help it cling to the pasta."),
        "For example, one tin of tomatoes with two cloves of garlic makes enough sauce for about two hundred grams of "
        "pasta.",
        "Fresh tomatoes can be watery out of season, so tinned ones often give a better sauce.",
    ),
    Topic(
        "science", "Why is the sky blue?",
        "Sunlight is scattered by the gases in the air, and blue light is scattered much more than red light.",
        ("Sunlight contains all colours, which together look white.",
         "Shorter wavelengths such as blue bounce off air molecules far more strongly; this is called Rayleigh "
         "scattering.",
         "That scattered blue light reaches your eyes from every direction in the sky.",
         "At sunset the light travels through more air, so the blue is scattered away and reds and oranges remain."),
        "For example, astronauts on the Moon see a black sky in daylight, because there is no air to scatter the "
        "light.",
        "Violet is scattered even more than blue, but our eyes are less sensitive to it, so the sky looks blue rather "
        "than violet.",
    ),
    Topic(
        "health", "What can I do about a tension headache?",
        "Rest, drink some water, and take an over-the-counter painkiller such as ibuprofen or paracetamol if you need "
        "one.",
        ("Step away from the screen and relax your shoulders and jaw.",
         "A warm compress on the neck or a cool one on the forehead can ease the pain.",
         "Regular meals and enough sleep make headaches less frequent.",
         "Keep a note of when headaches happen to spot triggers such as skipped meals."),
        "For example, many people notice their headaches come on late in the afternoon after hours at a laptop without "
        "a break.",
        "A sudden, severe headache, or one with fever, confusion or a stiff neck, needs urgent medical attention.",
    ),
    Topic(
        "relationships", "How do I make friends in a new city?",
        "Join something that meets regularly, because friendships grow from seeing the same people again and again.",
        ("Pick a weekly activity such as a sports club, choir or volunteering group.",
         "Say yes to invitations, even when you feel tired.",
         "Suggest a specific plan, such as coffee on Saturday, rather than a vague someday.",
         "Be patient: it often takes several months of regular contact to become close."),
        "For example, joining a weekly running club gives you the same faces every Tuesday and an easy topic to talk "
        "about.",
        "If you are feeling very lonely or low, talking to someone, including a professional, can help while you build "
        "a network.",
    ),
    Topic(
        "technology", "How do I choose a strong password?",
        "Use a long passphrase of several random words, and a different password for every account.",
        ("Length matters more than odd symbols; four or five random words are hard to guess.",
         "A password manager can create and remember unique passwords for you.",
         "Turn on two-factor authentication for email and banking.",
         "Never reuse your email password anywhere else."),
        "For example, a phrase like 'copper lantern misty orbit' is easier to remember and harder to crack than "
        "'P@ssw0rd1'.",
        "Some sites still have odd password rules, so you may need to add a number or symbol to your passphrase.",
    ),
    Topic(
        "home", "How often should I water my houseplants?",
        "Water when the top few centimetres of soil are dry rather than on a fixed schedule.",
        ("Push a finger into the soil to check the moisture before watering.",
         "Water thoroughly until it drains out of the bottom, then empty the saucer.",
         "Most plants need less water in winter, when they grow slowly.",
         "Succulents and cacti like to dry out completely between waterings."),
        "For example, a peace lily droops when it is thirsty and perks up within hours of a good drink.",
        "Overwatering kills more houseplants than underwatering, so when in doubt, wait a day or two.",
    ),
    Topic(
        "work", "How do I ask my manager for a raise?",
        "Book a meeting, show what you have achieved and what the role pays elsewhere, and ask for a specific number.",
        ("Collect concrete results from the past year, such as projects delivered or money saved.",
         "Look up salary surveys for your role and region.",
         "Time the conversation before budgets are set, often a few months before the review cycle.",
         "If the answer is no, ask what you would need to achieve to get there and when to revisit it."),
        "For example, saying that you led the migration that cut hosting costs by fifteen percent is stronger than "
        "saying you work hard.",
        "Some companies only change pay at fixed review dates, so the timing may matter as much as the case you make.",
    ),
    Topic(
        "cooking", "How do I cook a steak in a pan?",
        "Dry the steak, season it with salt, and sear it in a very hot pan for a few minutes on each side, then let it "
        "rest.",
        ("Take the steak out of the fridge about thirty minutes before cooking.",
         "Heat a heavy pan until it is smoking lightly, with a little oil.",
         "Turn the steak every minute or so for an even crust.",
         "Rest it for five minutes before slicing so the juices stay inside."),
        "For example, a steak about two and a half centimetres thick takes roughly three to four minutes per side for "
        "medium-rare.",
        "A meat thermometer is the only reliable way to know the doneness, since cuts and stoves vary.",
    ),
    Topic(
        "finance", "What is an index fund?",
        "An index fund is an investment fund that buys all the companies in a market index, so you own a small slice "
        "of the whole market.",
        ("It follows an index such as the S&P 500 instead of paying managers to pick stocks.",
         "Fees are usually very low, which matters a lot over decades.",
         "Spreading money across hundreds of companies reduces the risk of any one failing.",
         "You can buy one through most brokers or pension providers."),
        "For example, a fund tracking a global index might hold several thousand companies from dozens of countries.",
        "The value still falls when the whole market falls, so it suits money you will not need for several years.",
    ),
    Topic(
        "parenting", "How can I get my toddler to eat vegetables?",
        "Keep offering vegetables alongside foods your toddler already likes, without pressure, and eat them yourself.",
        ("Children often need to see a new food ten or more times before they accept it.",
         "Serve a small portion next to familiar food on the same plate.",
         "Let your child help wash or stir the vegetables.",
         "Avoid bribes such as dessert for eating greens, which makes vegetables seem like a chore."),
        "For example, roasted carrot sticks served with a dip your child already likes are often accepted faster than "
        "boiled ones.",
        "If your child eats a very limited range of foods or is not growing well, mention it to your doctor.",
    ),
    Topic(
        "writing", "How do I write a good cover letter?",
        "Keep it to one page, explain why you want this particular job, and show with examples how you fit it.",
        ("Address it to a named person if you can find one.",
         "Open with the role and one strong reason you are a good match.",
         "Pick two achievements that match the job's main requirements.",
         "End by saying you would welcome an interview, and thank the reader."),
        "For example, for a customer service role you might describe how you cut response times in half at your last "
        "job.",
        "Some employers skip cover letters entirely, so put most of your effort into the CV if the posting does not "
        "ask for one.",
    ),
    Topic(
        "technology", "Why is my Wi-Fi so slow?",
        "Slow Wi-Fi is usually caused by distance from the router, interference, or too many devices, and restarting "
        "the router is a good first step.",
        ("Move the router to a central, raised spot away from walls and metal objects.",
         "Use the 5 GHz band for devices near the router; it is faster over short distances.",
         "Check whether one device is downloading large updates or streaming in high definition.",
         "Run a speed test with a cable plugged in to see whether the problem is the Wi-Fi or the connection itself."),
        "For example, moving a router out of a cupboard and onto a shelf can double the speed in the far rooms.",
        "If the cabled speed is also slow, the problem is with the internet provider rather than your home network.",
    ),
    Topic(
        "health", "How can I improve my posture at a desk?",
        "Set up the desk so your screen is at eye level and your feet are flat, and get up to move every half hour.",
        ("The top of the screen should be at or just below eye level.",
         "Keep your elbows at roughly ninety degrees with the keyboard close.",
         "Sit back in the chair so the backrest supports your lower back.",
         "Stand up, stretch or walk for a couple of minutes every thirty minutes."),
        "For example, putting a laptop on a stack of books and using a separate keyboard fixes the most common neck "
        "strain.",
        "Persistent back or neck pain deserves a check with a physiotherapist, because posture is only one possible "
        "cause.",
    ),
    Topic(
        "travel", "How do I pack light for a week-long trip?",
        "Pack clothes that all go together, plan to do laundry once, and limit yourself to one carry-on bag.",
        ("Choose two or three colours so every top matches every bottom.",
         "Bring at most two pairs of shoes and wear the bulkiest pair on the plane.",
         "Use packing cubes or roll clothes to save space.",
         "Buy toiletries at your destination instead of carrying full-size bottles."),
        "For example, five tops, two trousers and one warm layer cover a week if you wash a few things midway.",
        "Trips with formal events or very different climates may need more, so check your plans before cutting too "
        "much.",
    ),
    Topic(
        "science", "How do vaccines work?",
        "Vaccines show your immune system a harmless version or piece of a germ, so it learns to recognise and fight "
        "the real one.",
        ("The vaccine contains a weakened or inactivated germ, or instructions for making one of its proteins.",
         "Your immune system responds by making antibodies and memory cells.",
         "If you later meet the real germ, those memory cells react quickly, before you get seriously ill.",
         "Some vaccines need boosters because the immune memory fades over time."),
        "For example, the tetanus vaccine is boosted every ten years or after a deep wound, because protection wanes.",
        "No vaccine protects everyone completely, which is why high vaccination rates in a community also matter.",
    ),
    Topic(
        "home", "How do I unclog a slow kitchen sink?",
        "Try boiling water first, then a plunger, and if that fails, clean out the trap under the sink.",
        ("Pour a kettle of hot water down the drain to melt grease.",
         "Use a cup plunger with a few centimetres of water in the sink to get a good seal.",
         "Place a bucket under the U-shaped trap, unscrew it by hand and clear it out.",
         "Afterwards, wipe greasy pans with paper before washing them to stop it happening again."),
        "For example, most kitchen clogs are a plug of cooled fat and food scraps sitting in the trap, which comes out "
        "in a minute once it is open.",
        "Do not use boiling water on plastic pipes that are already damaged, and call a plumber if several drains are "
        "slow at once.",
    ),
    Topic(
        "learning", "How can I remember what I read?",
        "Test yourself on what you read instead of rereading it, and explain the main ideas in your own words.",
        ("After each chapter, close the book and write down the key points from memory.",
         "Review those notes a day later, then a week later.",
         "Connect new ideas to things you already know or have experienced.",
         "Teach the idea to someone else, which quickly shows what you have not understood."),
        "For example, writing three sentences summarising a chapter right after reading it helps more than "
        "highlighting half the page.",
        "Some material is simply not worth remembering in detail, so decide what matters before making the effort.",
    ),
    Topic(
        "fitness", "How many times a week should I work out?",
        "Aim for about three to five sessions a week, mixing strength training and cardio, with at least one rest day.",
        ("Health guidelines suggest at least 150 minutes of moderate cardio per week.",
         "Train each major muscle group with strength exercises at least twice a week.",
         "Rest days let muscles recover and reduce injury risk.",
         "Consistency over months matters far more than any single hard session."),
        "For example, two full-body strength sessions plus three thirty-minute brisk walks meet the usual guidelines.",
        "If you are recovering from an injury or illness, build up more gradually and follow medical advice.",
    ),
    Topic(
        "cooking", "How do I know when an egg is fresh?",
        "Put the egg in a bowl of water: a fresh egg sinks and lies flat, an old one stands up or floats.",
        ("The air pocket inside the egg grows as it ages, which makes it float.",
         "An egg that stands on its end is older but usually still fine to cook.",
         "Check the best-before date on the box as well.",
         "If an egg smells bad when you crack it, throw it away."),
        "For example, slightly older eggs are actually easier to peel when you hard-boil them.",
        "The float test shows age, not safety, so eggs from a cracked shell or a warm storage place may be risky "
        "either way.",
    ),
    Topic(
        "money", "How do I start a budget?",
        "Write down your monthly income, list your fixed costs, and decide in advance where the rest of the money "
        "goes.",
        ("Look at the last two or three months of bank statements to see where money actually goes.",
         "Split spending into needs, wants and savings.",
         "Set up an automatic transfer to savings on payday.",
         "Review the budget at the end of each month and adjust the categories."),
        "For example, a common starting rule is fifty percent for needs, thirty for wants and twenty for savings.",
        "An irregular income needs a different approach, such as budgeting from your lowest typical month.",
    ),
)
